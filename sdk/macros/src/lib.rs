//! `#[derive(Parameters)]` for `data-exporter-sdk`: a plugin's parameter table, read off the
//! serde struct it deserialises its destination config (or its settings) into.
//!
//! Use it through the SDK (`data_exporter_sdk::Parameters`), which documents it with examples
//! that compile; this crate only holds the macro, as a proc-macro must live in a crate of its own.
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Expr, ExprLit, Fields, GenericArgument, Lit, LitStr, PathArguments, Token, Type,
};

/// Describe a serde struct's fields as plugin parameters: implements
/// `data_exporter_sdk::Parameters` (see it for a complete, tested example).
///
/// For each field it infers:
///
/// - **name**: the field's name, as serde reads it: `#[serde(rename = "..")]` on the field, else
///   the struct's `#[serde(rename_all = "..")]`, else the field's identifier;
/// - **type**: from the Rust type: `String`, `str`, `char`, `PathBuf` are strings; `bool`; the
///   integer types (and `NonZero*`) are integers; `f32`, `f64` are numbers; `Vec`, `VecDeque`,
///   sets, arrays, slices and tuples are arrays; `HashMap`, `BTreeMap`, `IndexMap` and `Map` are
///   objects; `Option`, `Box`, `Rc`, `Arc` and `Cow` take their content's type. Any other type
///   (an enum of your own, say) needs `#[param(type = "string")]`;
/// - **required**: unless it is an `Option`, or has a default (`#[serde(default)]` on the field or
///   the struct, or `#[param(default = ..)]`);
/// - **default**: `#[param(default = "POST")]` (a literal: string, number or bool) or
///   `#[param(default_json = "{\"a\": 1}")]` (JSON text); else, with `#[serde(default)]`, the
///   type's own default (`""`, `false`, `0`, `[]`, `{}`); with `#[serde(default = "path")]` or a
///   struct-level default, the value it gives, for strings, booleans and numbers;
/// - **usage**: the field's doc comment, its lines joined.
///
/// `#[param(..)]` says the rest: `secret` (a credential: the host never shows or logs it),
/// `required` (required even though serde has a default for it, e.g. for the seed's Go zero
/// values), `type = ".."` (`string`, `boolean`, `integer`, `number`, `object`, `array`),
/// `usage = ".."` (instead of the doc comment), `skip` (not listed). Fields serde skips
/// (`#[serde(skip)]`, `skip_deserializing`) are not listed; `#[serde(flatten)]` is refused
/// (implement `Parameters` by hand).
///
/// ```ignore
/// // Not compiled here: this crate cannot depend on the SDK that re-exports it.
/// // The same example, compiled and run, is on `data_exporter_sdk::Parameters`.
/// #[derive(serde::Deserialize, data_exporter_sdk::Parameters)]
/// #[serde(rename_all = "camelCase")]
/// struct Config {
///     /// Where requests go.
///     url: String,
///     /// Sent as a bearer token.
///     #[serde(default)]
///     #[param(secret)]
///     api_token: String,
/// }
/// ```
#[proc_macro_derive(Parameters, attributes(param))]
pub fn derive_parameters(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    expand(&input).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// The JSON type of a parameter, as `data_exporter_sdk::ParamType` names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    String,
    Boolean,
    Integer,
    Number,
    Object,
    Array,
}

impl Kind {
    fn parse(s: &LitStr) -> syn::Result<Kind> {
        Ok(match s.value().as_str() {
            "string" => Kind::String,
            "boolean" | "bool" => Kind::Boolean,
            "integer" => Kind::Integer,
            "number" => Kind::Number,
            "object" => Kind::Object,
            "array" => Kind::Array,
            other => {
                return Err(syn::Error::new(
                    s.span(),
                    format!("unknown parameter type `{other}`: use string, boolean, integer, number, object or array"),
                ));
            }
        })
    }

    fn variant(self) -> TokenStream2 {
        match self {
            Kind::String => quote!(String),
            Kind::Boolean => quote!(Boolean),
            Kind::Integer => quote!(Integer),
            Kind::Number => quote!(Number),
            Kind::Object => quote!(Object),
            Kind::Array => quote!(Array),
        }
    }

    /// Strings, booleans and numbers: their defaults are shown from the value serde would use.
    fn is_scalar(self) -> bool {
        matches!(self, Kind::String | Kind::Boolean | Kind::Integer | Kind::Number)
    }
}

/// What the Rust type of a field says.
struct Inferred {
    /// Its JSON type, when the type is one the derive knows.
    kind: Option<Kind>,
    /// It is an `Option`: never required, no default.
    optional: bool,
    /// The JSON text of `Default::default()` for it, when known and not `null`.
    zero: Option<&'static str>,
}

fn infer(ty: &Type) -> Inferred {
    let plain = |kind, zero| Inferred { kind: Some(kind), optional: false, zero };
    match ty {
        Type::Reference(r) => infer(&r.elem),
        Type::Paren(p) => infer(&p.elem),
        Type::Group(g) => infer(&g.elem),
        Type::Array(_) | Type::Slice(_) => plain(Kind::Array, None),
        Type::Tuple(t) if !t.elems.is_empty() => plain(Kind::Array, None),
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return Inferred { kind: None, optional: false, zero: None };
            };
            let first_type_arg = || match &last.arguments {
                PathArguments::AngleBracketed(a) => a.args.iter().find_map(|a| match a {
                    GenericArgument::Type(t) => Some(t),
                    _ => None,
                }),
                _ => None,
            };
            let name = last.ident.to_string();
            match name.as_str() {
                "Option" => {
                    let inner = first_type_arg().map(infer);
                    Inferred { kind: inner.and_then(|i| i.kind), optional: true, zero: None }
                }
                "Box" | "Rc" | "Arc" | "Cow" => match first_type_arg() {
                    Some(t) => infer(t),
                    None => Inferred { kind: None, optional: false, zero: None },
                },
                "String" | "str" | "PathBuf" | "Path" => plain(Kind::String, Some("\"\"")),
                "char" => plain(Kind::String, None),
                "bool" => plain(Kind::Boolean, Some("false")),
                "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => {
                    plain(Kind::Integer, Some("0"))
                }
                n if n.starts_with("NonZero") => plain(Kind::Integer, None),
                "f32" | "f64" => plain(Kind::Number, Some("0.0")),
                "Vec" | "VecDeque" | "LinkedList" | "BinaryHeap" | "HashSet" | "BTreeSet" | "IndexSet" => {
                    plain(Kind::Array, Some("[]"))
                }
                "HashMap" | "BTreeMap" | "IndexMap" | "Map" => plain(Kind::Object, Some("{}")),
                _ => Inferred { kind: None, optional: false, zero: None },
            }
        }
        _ => Inferred { kind: None, optional: false, zero: None },
    }
}

/// A `#[serde(default)]` or `#[serde(default = "path")]`.
enum SerdeDefault {
    Type,
    Path(syn::ExprPath),
}

/// The serde attributes the parameter table depends on.
#[derive(Default)]
struct SerdeAttrs {
    rename: Option<String>,
    rename_all: Option<LitStr>,
    default: Option<SerdeDefault>,
    skip: bool,
    flatten: Option<Span>,
}

/// Consume the value of an attribute argument we do not care about (`= ..` or `(..)`).
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?;
        while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
            meta.input.parse::<proc_macro2::TokenTree>()?;
        }
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

/// `rename = ".."` or `rename(deserialize = "..")`: the name serde deserialises from.
fn deserialize_name(meta: &ParseNestedMeta) -> syn::Result<Option<LitStr>> {
    if meta.input.peek(Token![=]) {
        return Ok(Some(meta.value()?.parse()?));
    }
    let mut name = None;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident("deserialize") {
            name = Some(inner.value()?.parse()?);
            Ok(())
        } else {
            skip_value(&inner)
        }
    })?;
    Ok(name)
}

fn serde_attrs(attrs: &[Attribute]) -> syn::Result<SerdeAttrs> {
    let mut out = SerdeAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            let p = &meta.path;
            if p.is_ident("rename") {
                out.rename = deserialize_name(&meta)?.map(|s| s.value()).or(out.rename.take());
            } else if p.is_ident("rename_all") {
                out.rename_all = deserialize_name(&meta)?.or(out.rename_all.take());
            } else if p.is_ident("default") {
                out.default = Some(if meta.input.peek(Token![=]) {
                    let path: LitStr = meta.value()?.parse()?;
                    SerdeDefault::Path(path.parse()?)
                } else {
                    SerdeDefault::Type
                });
            } else if p.is_ident("skip") || p.is_ident("skip_deserializing") {
                out.skip = true;
            } else if p.is_ident("flatten") {
                out.flatten = Some(p.span());
            } else {
                skip_value(&meta)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// A `#[param(default = ..)]`: JSON text known now.
struct ParamAttrs {
    secret: bool,
    required: bool,
    skip: bool,
    kind: Option<Kind>,
    usage: Option<String>,
    default: Option<String>,
}

fn param_attrs(attrs: &[Attribute]) -> syn::Result<ParamAttrs> {
    let mut out = ParamAttrs { secret: false, required: false, skip: false, kind: None, usage: None, default: None };
    for attr in attrs.iter().filter(|a| a.path().is_ident("param")) {
        attr.parse_nested_meta(|meta| {
            let p = &meta.path;
            if p.is_ident("secret") {
                out.secret = true;
            } else if p.is_ident("required") {
                out.required = true;
            } else if p.is_ident("skip") {
                out.skip = true;
            } else if p.is_ident("type") {
                out.kind = Some(Kind::parse(&meta.value()?.parse()?)?);
            } else if p.is_ident("usage") {
                out.usage = Some(meta.value()?.parse::<LitStr>()?.value());
            } else if p.is_ident("default") {
                let lit: Lit = meta.value()?.parse()?;
                out.default = Some(match &lit {
                    Lit::Str(s) => json_string(&s.value()),
                    Lit::Bool(b) => b.value.to_string(),
                    Lit::Int(i) => i.base10_digits().to_string(),
                    Lit::Float(f) => f.base10_digits().to_string(),
                    _ => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`default` takes a string, number or bool literal; use `default_json = \"..\"` for \
                             an object or an array",
                        ));
                    }
                });
            } else if p.is_ident("default_json") {
                out.default = Some(meta.value()?.parse::<LitStr>()?.value());
            } else {
                return Err(meta.error(
                    "unknown `param` attribute: expected secret, required, skip, type = \"..\", usage = \"..\", \
                     default = <literal> or default_json = \"..\"",
                ));
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The field's doc comment, its lines trimmed and joined with spaces.
fn doc_comment(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("doc")) {
        if let syn::Meta::NameValue(nv) = &attr.meta
            && let Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) = &nv.value
        {
            lines.extend(s.value().lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
        }
    }
    lines.join(" ")
}

/// serde's `rename_all` rules, applied to a snake_case field name.
fn rename(rule: &LitStr, field: &str) -> syn::Result<String> {
    let pascal = || -> String {
        field
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
            })
            .collect()
    };
    Ok(match rule.value().as_str() {
        "lowercase" => field.to_lowercase(),
        "UPPERCASE" => field.to_uppercase(),
        "PascalCase" => pascal(),
        "camelCase" => {
            let p = pascal();
            let mut c = p.chars();
            c.next().map(|f| f.to_lowercase().chain(c).collect()).unwrap_or_default()
        }
        "snake_case" => field.to_string(),
        "SCREAMING_SNAKE_CASE" => field.to_uppercase(),
        "kebab-case" => field.replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => field.to_uppercase().replace('_', "-"),
        other => return Err(syn::Error::new(rule.span(), format!("unknown rename_all rule `{other}`"))),
    })
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[derive(Parameters)] describes a struct with named fields (a destination config or settings)",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new(
            data.fields.span(),
            "#[derive(Parameters)] needs named fields: each field is a parameter of the JSON object",
        ));
    };
    let container = serde_attrs(&input.attrs)?;
    let krate = quote!(::data_exporter_sdk);

    let mut params = Vec::new();
    let mut needs_defaults = false;
    for field in &fields.named {
        let serde = serde_attrs(&field.attrs)?;
        let param = param_attrs(&field.attrs)?;
        if let Some(span) = serde.flatten {
            return Err(syn::Error::new(
                span,
                "#[derive(Parameters)] cannot list the fields of a #[serde(flatten)] field: implement \
                 `data_exporter_sdk::Parameters` by hand",
            ));
        }
        if serde.skip || param.skip {
            continue;
        }
        let ident = field.ident.as_ref().expect("named field");
        let name = match (&serde.rename, &container.rename_all) {
            (Some(n), _) => n.clone(),
            (None, Some(rule)) => rename(rule, &ident.unraw().to_string())?,
            (None, None) => ident.unraw().to_string(),
        };
        let inferred = infer(&field.ty);
        let kind = match (param.kind, inferred.kind) {
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => {
                return Err(syn::Error::new(
                    field.ty.span(),
                    format!(
                        "cannot tell the JSON type of parameter `{name}` from its Rust type: say it with \
                         #[param(type = \"string\")] (or boolean, integer, number, object, array)"
                    ),
                ));
            }
        };
        // The default, as JSON text now or as an expression serialised when `parameters` runs.
        let scalar = inferred.kind.is_some_and(Kind::is_scalar);
        let mut default_now = param.default.clone();
        let mut default_value: Option<TokenStream2> = None;
        if default_now.is_none() {
            match (&serde.default, &container.default) {
                (Some(SerdeDefault::Type), _) => default_now = inferred.zero.map(str::to_string),
                (Some(SerdeDefault::Path(path)), _) if scalar => default_value = Some(quote!(#path())),
                (None, Some(_)) if scalar => {
                    needs_defaults = true;
                    default_value = Some(quote!(__defaults.#ident));
                }
                _ => {}
            }
        }
        let has_default = default_now.is_some() || serde.default.is_some() || container.default.is_some();
        let required = param.required || !(inferred.optional || has_default);

        let name_lit = LitStr::new(&name, ident.span());
        let variant = kind.variant();
        let mut p = quote_spanned!(field.ty.span()=> #krate::Parameter::typed(#name_lit, #krate::ParamType::#variant));
        if required {
            p = quote!(#p.required());
        }
        if let Some(json) = default_now {
            p = quote!(#p.default(#json));
        }
        if param.secret {
            p = quote!(#p.secret());
        }
        let usage = param.usage.unwrap_or_else(|| doc_comment(&field.attrs));
        if !usage.is_empty() {
            p = quote!(#p.usage(#usage));
        }
        if let Some(value) = default_value {
            p = quote!(#krate::__private::with_default(#p, &#value));
        }
        params.push(p);
    }

    let defaults = match &container.default {
        Some(_) if !needs_defaults => quote!(),
        Some(SerdeDefault::Type) => quote!(let __defaults: Self = ::core::default::Default::default();),
        Some(SerdeDefault::Path(path)) => quote!(let __defaults: Self = #path();),
        None => quote!(),
    };
    let ty = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Parameters for #ty #ty_generics #where_clause {
            fn parameters() -> ::std::vec::Vec<#krate::Parameter> {
                #defaults
                ::std::vec![#(#params),*]
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_all_rules_match_serde() {
        let rule = |r: &str| LitStr::new(r, Span::call_site());
        let cases = [
            ("camelCase", "check_cert_now", "checkCertNow"),
            ("PascalCase", "check_cert", "CheckCert"),
            ("kebab-case", "check_cert", "check-cert"),
            ("SCREAMING_SNAKE_CASE", "check_cert", "CHECK_CERT"),
            ("SCREAMING-KEBAB-CASE", "check_cert", "CHECK-CERT"),
            ("lowercase", "check_cert", "check_cert"),
            ("snake_case", "url", "url"),
        ];
        for (r, field, want) in cases {
            assert_eq!(rename(&rule(r), field).unwrap(), want, "{r}");
        }
        assert!(rename(&rule("Title Case"), "a").is_err());
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("POST"), "\"POST\"");
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn types_are_inferred_and_unknown_ones_refused() {
        let kind = |t: &str| infer(&syn::parse_str(t).unwrap()).kind;
        assert_eq!(kind("String"), Some(Kind::String));
        assert_eq!(kind("Option<Box<str>>"), Some(Kind::String));
        assert_eq!(kind("std::collections::BTreeMap<String, String>"), Some(Kind::Object));
        assert_eq!(kind("Vec<u16>"), Some(Kind::Array));
        assert_eq!(kind("core::num::NonZeroU32"), Some(Kind::Integer));
        assert_eq!(kind("f64"), Some(Kind::Number));
        assert_eq!(kind("Method"), None);
        assert!(infer(&syn::parse_str("Option<u32>").unwrap()).optional);

        let input: DeriveInput = syn::parse_str("struct C { method: Method }").unwrap();
        let e = expand(&input).unwrap_err().to_string();
        assert!(e.contains("parameter `method`") && e.contains("#[param(type"), "{e}");
        let input: DeriveInput = syn::parse_str("struct C { #[serde(flatten)] tls: Tls }").unwrap();
        assert!(expand(&input).unwrap_err().to_string().contains("flatten"));
        let input: DeriveInput = syn::parse_str("struct C { #[param(secrte)] a: String }").unwrap();
        assert!(expand(&input).unwrap_err().to_string().contains("unknown `param` attribute"));
        let input: DeriveInput = syn::parse_str("enum C { A }").unwrap();
        assert!(expand(&input).is_err());
    }
}
