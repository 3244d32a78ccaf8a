//! Builders for a plugin's self-description: name, version, config key, parameters, settings.

use crate::bindings::narrows::exporter0_2_0::types as wit;

/// The JSON type of a parameter.
pub use wit::ParamType;

/// What a plugin says about itself (`GET /plugins` shows it).
///
/// Fields left empty (as by `PluginInfo::default()` or [`PluginInfo::of`]) are filled by
/// [`plugin!`](crate::plugin): name, version and description from the plugin's `Cargo.toml`,
/// the config key from the name.
#[derive(Debug, Clone, Default)]
pub struct PluginInfo {
    /// Short name, e.g. `webhook`.
    pub name: String,
    /// The plugin's version, e.g. `0.1.0`.
    pub version: String,
    /// The key under a report's `config` this plugin consumes, e.g. `webhook`.
    pub config_key: String,
    /// One line on what the plugin does.
    pub description: String,
    /// The destination config's parameters.
    pub parameters: Vec<Parameter>,
    /// The plugin's settings, set by the operator in `[runtime.plugins.<file>.settings]`.
    pub settings: Vec<Parameter>,
}

impl PluginInfo {
    /// A plugin called `name`, at `version`, consuming `config_key`.
    pub fn new(name: &str, version: &str, config_key: &str) -> Self {
        PluginInfo {
            name: name.into(),
            version: version.into(),
            config_key: config_key.into(),
            description: String::new(),
            parameters: Vec::new(),
            settings: Vec::new(),
        }
    }

    /// Everything the types of `C` say: the parameters of its config and of its settings, both
    /// `#[derive(Parameters)]` (or [`NoSettings`](crate::NoSettings)); name, version,
    /// description and config key left for [`plugin!`](crate::plugin) to fill from the package.
    ///
    /// ```
    /// use data_exporter_sdk::{Parameters, PluginInfo};
    ///
    /// #[derive(serde::Deserialize, Parameters)]
    /// struct Config {
    ///     /// The index written to
    ///     index: String,
    /// }
    /// #[derive(serde::Deserialize, Parameters)]
    /// struct Settings {
    ///     /// Most documents per request
    ///     #[serde(default = "max")]
    ///     max_docs: u32,
    /// }
    /// fn max() -> u32 { 500 }
    ///
    /// let info = PluginInfo::new("", "", "index").params::<Config>().settings::<Settings>();
    /// assert!(info.parameters[0].required);
    /// assert_eq!(info.settings[0].default.as_deref(), Some("500"));
    /// ```
    pub fn of<C: crate::Consumer>() -> Self
    where
        C::Config: Parameters,
        C::Settings: Parameters,
    {
        PluginInfo::default().params::<C::Config>().settings::<C::Settings>()
    }

    /// Set the config key (the key under a report's `config` this plugin consumes); empty: the
    /// name.
    pub fn config_key(mut self, key: &str) -> Self {
        self.config_key = key.into();
        self
    }

    /// Add every parameter `T` describes (a destination config that derives [`Parameters`]).
    pub fn params<T: Parameters>(mut self) -> Self {
        self.parameters.extend(T::parameters());
        self
    }

    /// Add every setting `T` describes (a settings struct that derives [`Parameters`]).
    pub fn settings<T: Parameters>(mut self) -> Self {
        self.settings.extend(T::parameters());
        self
    }

    /// Set the one-line description.
    pub fn description(mut self, text: &str) -> Self {
        self.description = text.into();
        self
    }

    /// Add a destination config parameter.
    pub fn param(mut self, p: Parameter) -> Self {
        self.parameters.push(p);
        self
    }

    /// Add the seed protocol's TLS parameters, `checkCert` (verify the server's certificate,
    /// default true) and `mutualTLS` (present the operator's client certificate, default false).
    pub fn tls_params(self) -> Self {
        self.param(Parameter::boolean("checkCert").default("true").usage("Verify the server's TLS certificate")).param(
            Parameter::boolean("mutualTLS").default("false").usage(
                "Present the client certificate configured by the operator (http.client_cert_file), to the \
                 origins it allows (http.client_cert_origins)",
            ),
        )
    }

    /// Add a setting (a field of the operator's `[runtime.plugins.<file>.settings]`).
    pub fn setting(mut self, p: Parameter) -> Self {
        self.settings.push(p);
        self
    }

    pub(crate) fn into_wit(self) -> wit::PluginInfo {
        wit::PluginInfo {
            name: self.name,
            version: self.version,
            config_key: self.config_key,
            description: self.description,
            parameters: self.parameters.into_iter().map(Parameter::into_wit).collect(),
            settings: self.settings.into_iter().map(Parameter::into_wit).collect(),
        }
    }
}

/// One parameter: a field of the destination config or of the plugin's settings. Build one with
/// [`Parameter::string`] and its siblings, or derive a whole list with `#[derive(Parameters)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// The field's name in the JSON object, e.g. `host_port`.
    pub name: String,
    /// Its JSON type.
    pub ty: ParamType,
    /// Whether it must be set. The host skips a destination whose required fields are all
    /// empty (the seed's Go zero values).
    pub required: bool,
    /// Its default as JSON text (`"true"`, `"\"_doc\""`), when it has one.
    pub default: Option<String>,
    /// What it does, for people.
    pub usage: String,
    /// It is a credential: the host never shows or logs its value.
    pub secret: bool,
}

impl Parameter {
    /// A parameter of JSON type `ty`.
    pub fn typed(name: &str, ty: ParamType) -> Self {
        Parameter { name: name.into(), ty, required: false, default: None, usage: String::new(), secret: false }
    }
    /// A string parameter.
    pub fn string(name: &str) -> Self {
        Self::typed(name, ParamType::String)
    }
    /// A boolean parameter.
    pub fn boolean(name: &str) -> Self {
        Self::typed(name, ParamType::Boolean)
    }
    /// An integer parameter.
    pub fn integer(name: &str) -> Self {
        Self::typed(name, ParamType::Integer)
    }
    /// A number parameter (fractions allowed).
    pub fn number(name: &str) -> Self {
        Self::typed(name, ParamType::Number)
    }
    /// An object parameter.
    pub fn object(name: &str) -> Self {
        Self::typed(name, ParamType::Object)
    }
    /// An array parameter.
    pub fn array(name: &str) -> Self {
        Self::typed(name, ParamType::Array)
    }
    /// It must be set.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
    /// Its default, as JSON text (`"true"`, `"\"_doc\""`).
    pub fn default(mut self, json: &str) -> Self {
        self.default = Some(json.into());
        self
    }
    /// What it does, for people.
    pub fn usage(mut self, text: &str) -> Self {
        self.usage = text.into();
        self
    }
    /// It is a credential: the host never shows or logs its value.
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    fn into_wit(self) -> wit::Parameter {
        wit::Parameter {
            name: self.name,
            type_: self.ty,
            required: self.required,
            default: self.default,
            usage: self.usage,
            secret: self.secret,
        }
    }
}

/// A struct whose fields are plugin parameters: a destination config or a plugin's settings.
///
/// Derive it (`#[derive(Parameters)]`, beside serde's `Deserialize`) rather than write it: for
/// each field the derive takes the name serde reads (`rename`, `rename_all`), the JSON type from
/// the Rust type (`String`, `bool`, integers, floats, `Vec`, maps; an `Option` is never
/// required), whether it is required (no `Option`, no serde default), its default (the type's
/// for `#[serde(default)]`, the function's for `#[serde(default = "f")]` on strings, booleans
/// and numbers, or `#[param(default = ..)]`), and its usage from the doc comment.
/// `#[param(secret)]` marks a credential; `#[param(type = "string")]` gives the type of a field
/// whose Rust type it cannot read (your own enum); `#[param(required)]`, `#[param(usage = "..")]`,
/// `#[param(default_json = "..")]` and `#[param(skip)]` say the rest.
///
/// ```
/// use data_exporter_sdk::{ParamType, Parameter, Parameters};
/// use std::collections::BTreeMap;
///
/// #[derive(serde::Deserialize)]
/// #[serde(rename_all = "lowercase")]
/// enum Batch { Array, Ndjson }
///
/// #[derive(serde::Deserialize, Parameters)]
/// #[serde(deny_unknown_fields)]
/// struct Hook {
///     /// Where requests go, e.g.
///     /// `https://receiver:8080/hook`
///     url: String,
///     /// Extra request headers
///     #[serde(default)]
///     headers: BTreeMap<String, String>,
///     /// How a batch becomes requests
///     #[serde(default = "array")]
///     #[param(type = "string", default = "array")]
///     batch: Batch,
///     /// Sent as `Authorization: Bearer <token>`
///     #[param(secret)]
///     bearer_token: Option<String>,
///     /// Verify the server certificate
///     #[serde(default = "data_exporter_sdk::default_true", rename = "checkCert")]
///     check_cert: bool,
/// }
/// fn array() -> Batch { Batch::Array }
///
/// let p = Hook::parameters();
/// assert_eq!(
///     p[0],
///     Parameter::string("url").required().usage("Where requests go, e.g. `https://receiver:8080/hook`")
/// );
/// assert_eq!((p[1].ty, p[1].default.as_deref()), (ParamType::Object, Some("{}")));
/// assert_eq!((p[2].ty, p[2].default.as_deref()), (ParamType::String, Some("\"array\"")));
/// assert!(p[3].secret && !p[3].required && p[3].default.is_none());
/// assert_eq!((p[4].name.as_str(), p[4].default.as_deref()), ("checkCert", Some("true")));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not describe its fields as plugin parameters",
    label = "no `Parameters` for this type",
    note = "add `#[derive(data_exporter_sdk::Parameters)]` to `{Self}` (or `impl Parameters` by hand)"
)]
pub trait Parameters {
    /// The parameters, in field order.
    fn parameters() -> Vec<Parameter>;
}

impl Parameters for crate::NoSettings {
    /// None.
    fn parameters() -> Vec<Parameter> {
        Vec::new()
    }
}
