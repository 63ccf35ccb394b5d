//! Image mappings (`--image IMAGE=TEMPLATE`), the expansion of a template into the argv of a
//! local process, and the rewriting of container paths to the host directories that back them.

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf, str::FromStr};

/// One `--image IMAGE=TEMPLATE` flag.
#[derive(Clone, Debug)]
pub struct ImageMapping {
    image: String,
    template: Template,
}

impl FromStr for ImageMapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (image, template) = s
            .split_once('=')
            .ok_or_else(|| format!("expected IMAGE=TEMPLATE, got {s:?}"))?;
        let image = image.trim();
        if image.is_empty() || image == "*" {
            return Err(format!("empty image name in {s:?}"));
        }
        Ok(ImageMapping {
            image: image.to_string(),
            template: template.parse()?,
        })
    }
}

/// All mappings: exact names win over prefixes, and a longer prefix over a shorter one, so a
/// catch-all like `registry/*` can sit next to a specific `registry/vscode:1.2`.
#[derive(Debug, Default)]
pub struct ImageMap {
    exact: HashMap<String, Template>,
    prefixes: Vec<(String, Template)>,
}

impl ImageMap {
    pub fn new(mappings: Vec<ImageMapping>) -> Self {
        let mut map = ImageMap::default();
        for m in mappings {
            match m.image.strip_suffix('*') {
                Some(prefix) => map.prefixes.push((prefix.to_string(), m.template)),
                None => {
                    map.exact.insert(m.image, m.template);
                }
            }
        }
        map.prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        map
    }

    pub fn resolve(&self, image: &str) -> Option<&Template> {
        self.exact.get(image).or_else(|| {
            self.prefixes
                .iter()
                .find(|(p, _)| image.starts_with(p.as_str()))
                .map(|(_, t)| t)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// A parsed template. Parsing happens at start-up so that a typo fails the flag, not a pod.
#[derive(Clone, Debug)]
pub struct Template {
    words: Vec<Word>,
}

#[derive(Clone, Debug, PartialEq)]
enum Word {
    /// `{args}`: becomes any number of words, so it must stand alone.
    Args,
    Parts(Vec<Part>),
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Lit(String),
    Ip,
    Port,
    Mount(String),
    Env(String),
}

impl FromStr for Template {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut words = Vec::new();
        for w in s.split_whitespace() {
            if w == "{args}" {
                words.push(Word::Args);
                continue;
            }
            words.push(Word::Parts(parse_word(w)?));
        }
        if words.is_empty() {
            return Err(format!("empty template in {s:?}"));
        }
        Ok(Template { words })
    }
}

fn parse_word(w: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = w;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Lit(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in template word {w:?}"))?;
        let name = &after[..close];
        parts.push(match name {
            "ip" => Part::Ip,
            "port" => Part::Port,
            "args" => {
                return Err(format!(
                    "{{args}} must be a word of its own in the template, not part of {w:?}"
                ))
            }
            _ => {
                if let Some(path) = name.strip_prefix("mount:") {
                    if !path.starts_with('/') {
                        return Err(format!("{{mount:{path}}} needs an absolute path"));
                    }
                    Part::Mount(path.to_string())
                } else if let Some(var) = name.strip_prefix("env:") {
                    if var.is_empty() {
                        return Err(format!("empty variable name in {w:?}"));
                    }
                    Part::Env(var.to_string())
                } else {
                    return Err(format!(
                        "unknown placeholder {{{name}}} in {w:?} (known: {{ip}}, {{port}}, \
                         {{args}}, {{mount:/path}}, {{env:NAME}})"
                    ));
                }
            }
        });
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    Ok(parts)
}

/// What a template is expanded against, for one start of one container.
pub struct Expansion<'a> {
    pub ip: Ipv4Addr,
    pub port: Option<i32>,
    pub mounts: &'a Mounts,
    /// The container's resolved environment, in definition order.
    pub env: &'a [(String, String)],
    /// `command` + `args` after `$(VAR)` expansion, not yet rewritten through the mounts.
    pub args: &'a [String],
}

impl Template {
    pub fn expand(&self, x: &Expansion<'_>) -> Result<Vec<String>, String> {
        let mut argv = Vec::new();
        for word in &self.words {
            match word {
                Word::Args => argv.extend(x.args.iter().map(|a| x.mounts.rewrite_word(a))),
                Word::Parts(parts) => {
                    let mut out = String::new();
                    for part in parts {
                        match part {
                            Part::Lit(s) => out.push_str(s),
                            Part::Ip => out.push_str(&x.ip.to_string()),
                            Part::Port => match x.port {
                                Some(p) => out.push_str(&p.to_string()),
                                None => {
                                    return Err("the image template uses {port} but the \
                                                container declares no containerPort"
                                        .into())
                                }
                            },
                            Part::Mount(path) => match x.mounts.host_path(path) {
                                Some(host) => out.push_str(&host.to_string_lossy()),
                                None => {
                                    return Err(format!(
                                        "the image template uses {{mount:{path}}} but no \
                                         volumeMount of the container covers {path}"
                                    ))
                                }
                            },
                            Part::Env(name) => {
                                let value = lookup(x.env, name)
                                    .map(str::to_string)
                                    .or_else(|| std::env::var(name).ok())
                                    .ok_or_else(|| {
                                        format!(
                                            "the image template uses {{env:{name}}} but \
                                             neither the container nor vod-kubelet has {name}"
                                        )
                                    })?;
                                out.push_str(&value);
                            }
                        }
                    }
                    argv.push(out);
                }
            }
        }
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err("the image template expanded to no program (empty {args}?)".into());
        }
        Ok(argv)
    }
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    // Last definition wins, as in a container.
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Kubernetes' `$(VAR)` expansion in `command`, `args` and env values: a defined variable is
/// replaced, an undefined reference is kept as written, and `$$` escapes a `$`.
pub fn expand_refs(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(close) => {
                    let name = &body[..close];
                    match lookup(env, name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[close + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's volume mounts: container path → host directory.
#[derive(Debug, Default)]
pub struct Mounts {
    /// Mount paths without trailing slashes.
    list: Vec<(String, PathBuf)>,
}

impl Mounts {
    pub fn add(&mut self, mount_path: &str, host: PathBuf) {
        let p = mount_path.trim_end_matches('/');
        self.list.push((p.to_string(), host));
    }

    /// The host path behind `path` if it is a mount path or below one; the deepest mount wins,
    /// as it would shadow the others in a container.
    pub fn host_path(&self, path: &str) -> Option<PathBuf> {
        let path = path.trim_end_matches('/');
        self.list
            .iter()
            .filter_map(|(mp, host)| {
                let rest = path.strip_prefix(mp.as_str())?;
                if rest.is_empty() {
                    Some((mp.len(), host.clone()))
                } else {
                    let rel = rest.strip_prefix('/')?;
                    Some((mp.len(), host.join(rel)))
                }
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, p)| p)
    }

    /// Rewrites a command-line word that is a container path, or a `--flag=/path` whose value is
    /// one, so that programs meant to run inside a container find their files on the host.
    pub fn rewrite_word(&self, word: &str) -> String {
        if word.starts_with('/') {
            if let Some(p) = self.host_path(word) {
                return p.to_string_lossy().into_owned();
            }
        } else if let Some((flag, value)) = word.split_once('=') {
            if value.starts_with('/') {
                if let Some(p) = self.host_path(value) {
                    return format!("{flag}={}", p.to_string_lossy());
                }
            }
        }
        word.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Mounts {
        let mut m = Mounts::default();
        m.add("/vscode/", PathBuf::from("/state/pvc/ns/claim"));
        m.add("/vscode/data", PathBuf::from("/state/pods/u/data"));
        m
    }

    #[test]
    fn image_matching_prefers_exact_then_longest_prefix() {
        let map = ImageMap::new(vec![
            "reg/*=a".parse().expect("valid"),
            "reg/vscode*=b".parse().expect("valid"),
            "reg/vscode:1=c".parse().expect("valid"),
        ]);
        let first = |img: &str| match map.resolve(img).map(|t| &t.words[0]) {
            Some(Word::Parts(p)) => match &p[0] {
                Part::Lit(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        };
        assert_eq!(first("reg/vscode:1").as_deref(), Some("c"));
        assert_eq!(first("reg/vscode:2").as_deref(), Some("b"));
        assert_eq!(first("reg/other").as_deref(), Some("a"));
        assert_eq!(first("busybox"), None);
    }

    #[test]
    fn template_expansion() {
        let t: Template = "{args} --host {ip} --port={port} --dir {mount:/vscode/x} {env:A}"
            .parse()
            .expect("valid");
        let m = mounts();
        let env = vec![("A".to_string(), "1".to_string())];
        let args = vec![
            "/vscode/cli/code".to_string(),
            "--data=/vscode/data/u".to_string(),
            "/etc/passwd".to_string(),
        ];
        let argv = t
            .expand(&Expansion {
                ip: Ipv4Addr::new(127, 0, 0, 9),
                port: Some(8000),
                mounts: &m,
                env: &env,
                args: &args,
            })
            .expect("expands");
        assert_eq!(
            argv,
            [
                "/state/pvc/ns/claim/cli/code",
                "--data=/state/pods/u/data/u",
                "/etc/passwd",
                "--host",
                "127.0.0.9",
                "--port=8000",
                "--dir",
                "/state/pvc/ns/claim/x",
                "1"
            ]
        );
    }

    #[test]
    fn template_errors() {
        assert!("x{args}".parse::<Template>().is_err());
        assert!("x {nope}".parse::<Template>().is_err());
        assert!("x {ip".parse::<Template>().is_err());
        assert!("x {mount:rel}".parse::<Template>().is_err());
        assert!("noequals".parse::<ImageMapping>().is_err());
        let t: Template = "{args}".parse().expect("valid");
        let m = Mounts::default();
        let none = t.expand(&Expansion {
            ip: Ipv4Addr::LOCALHOST,
            port: None,
            mounts: &m,
            env: &[],
            args: &[],
        });
        assert!(none.is_err());
    }

    #[test]
    fn mount_prefix_is_per_component() {
        let m = mounts();
        assert_eq!(m.host_path("/vscodex"), None);
        assert_eq!(
            m.host_path("/vscode"),
            Some(PathBuf::from("/state/pvc/ns/claim"))
        );
    }

    #[test]
    fn var_refs() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand_refs("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand_refs("$(A", &env), "$(A");
    }
}
