//! Builders for a plugin's self-description: name, version, config key, parameters, settings.

use crate::bindings::narrows::exporter0_2_0::types as wit;

/// The JSON type of a parameter.
pub use wit::ParamType;

/// What a plugin says about itself (`GET /plugins` shows it).
#[derive(Debug, Clone)]
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

/// One parameter: a field of the destination config or of the plugin's settings.
#[derive(Debug, Clone)]
pub struct Parameter {
    name: String,
    ty: ParamType,
    required: bool,
    default: Option<String>,
    usage: String,
    secret: bool,
}

impl Parameter {
    fn new(name: &str, ty: ParamType) -> Self {
        Parameter { name: name.into(), ty, required: false, default: None, usage: String::new(), secret: false }
    }
    /// A string parameter.
    pub fn string(name: &str) -> Self {
        Self::new(name, ParamType::String)
    }
    /// A boolean parameter.
    pub fn boolean(name: &str) -> Self {
        Self::new(name, ParamType::Boolean)
    }
    /// An integer parameter.
    pub fn integer(name: &str) -> Self {
        Self::new(name, ParamType::Integer)
    }
    /// A number parameter (fractions allowed).
    pub fn number(name: &str) -> Self {
        Self::new(name, ParamType::Number)
    }
    /// An object parameter.
    pub fn object(name: &str) -> Self {
        Self::new(name, ParamType::Object)
    }
    /// An array parameter.
    pub fn array(name: &str) -> Self {
        Self::new(name, ParamType::Array)
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
