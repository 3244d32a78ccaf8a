//! Whom a crashed plugin call is blamed on: the plugin (counted toward quarantine), or one report
//! that keeps crashing it alone (dead-lettered as poison while the plugin delivers the rest). A
//! crashed batch is split in halves until the crashing report is alone (`call.rs`). Pure: its
//! table is in the tests.

/// Whom a crashed call is blamed on, and so what happens to its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Several reports and nothing known yet: call each half of them.
    Split,
    /// The plugin (or the destination): both halves of a split crashed, or a report crashed
    /// alone while no call of the plugin returned since it first crashed. Counts toward
    /// quarantine; the reports are retried.
    Plugin,
    /// The one report in the call, while the plugin returns other calls: retried alone, not
    /// counted toward quarantine.
    Suspect,
    /// The one report, for the `poison_after`th time: dead-lettered, not counted.
    Poison,
}

/// What one crashed call tells (a pure function: its table is in the tests).
#[derive(Debug, Clone, Copy)]
pub struct Crash {
    /// Reports in the call.
    pub reports: usize,
    /// The other half of the same split crashed too.
    pub sibling_crashed: bool,
    /// The call ran past its deadline: a slow destination as often as a payload, and a call
    /// each report alone would take as long, so it is not split.
    pub timed_out: bool,
    /// For one report: calls of its own it has crashed in a row, this one included.
    pub crashes_alone: u32,
    /// A call of the plugin returned since the report(s) first crashed.
    pub plugin_worked_since: bool,
    /// `runtime.limits.poison_after`.
    pub poison_after: u32,
}

/// Whom to blame for a crashed call: a plugin that crashes on everything is quarantined; one
/// that crashes on one report dead-letters that report and keeps delivering the rest.
pub fn blame(c: Crash) -> Blame {
    if c.sibling_crashed || c.timed_out {
        Blame::Plugin
    } else if c.reports > 1 {
        Blame::Split
    } else if !c.plugin_worked_since {
        Blame::Plugin
    } else if c.crashes_alone >= c.poison_after.max(1) {
        Blame::Poison
    } else {
        Blame::Suspect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_is_blamed_on_one_report_only_while_the_plugin_delivers_others() {
        use Blame::*;
        let c = |reports, sibling_crashed, crashes_alone, plugin_worked_since| Crash {
            reports,
            sibling_crashed,
            timed_out: false,
            crashes_alone,
            plugin_worked_since,
            poison_after: 3,
        };
        #[rustfmt::skip]
        let table = [
            // reports, other half crashed, crashes alone, plugin worked since => blame
            (c(500, false, 0, false), Split, "a crashed batch is split"),
            (c(250, false, 0, true), Split, "the crashing half is split again"),
            (c(2, true, 0, true), Plugin, "both halves crash: not one report's doing"),
            (c(1, true, 1, true), Plugin, "both single halves crash"),
            (c(1, false, 1, false), Plugin, "alone, no call returned since: the plugin may crash on everything"),
            (c(1, false, 5, false), Plugin, "however often, without evidence the plugin works"),
            (c(1, false, 1, true), Suspect, "alone while others are delivered"),
            (c(1, false, 2, true), Suspect, "again"),
            (c(1, false, 3, true), Poison, "the third time alone"),
            (c(1, false, 4, true), Poison, "past it"),
        ];
        for (crash, want, why) in table {
            assert_eq!(blame(crash), want, "{why}: {crash:?}");
        }
        let once = Crash {
            reports: 1,
            sibling_crashed: false,
            timed_out: false,
            crashes_alone: 1,
            plugin_worked_since: true,
            poison_after: 0,
        };
        assert_eq!(blame(once), Poison, "poison_after 0 acts as 1");
        let slow = Crash { reports: 500, timed_out: true, ..once };
        assert_eq!(blame(slow), Plugin, "a call past its deadline is not split");
        assert_eq!(blame(Crash { reports: 1, crashes_alone: 9, ..slow }), Plugin, "nor poison");
    }
}
