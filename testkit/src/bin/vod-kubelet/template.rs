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
    /// `{args}`, `{command}`, `{args-only}`: any number of words, so they must stand alone.
    Words(Sel),
    Parts(Vec<Part>),
}

/// Which of the container's words a list placeholder stands for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sel {
    /// `command` followed by `args`, the whole argv of a container.
    All,
    Command,
    ArgsOnly,
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
            let sel = match w {
                "{args}" => Some(Sel::All),
                "{command}" => Some(Sel::Command),
                "{args-only}" => Some(Sel::ArgsOnly),
                _ => None,
            };
            if let Some(sel) = sel {
                words.push(Word::Words(sel));
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
            "args" | "command" | "args-only" => {
                return Err(format!(
                    "{{{name}}} must be a word of its own in the template, not part of {w:?}"
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
                         {{args}}, {{command}}, {{args-only}}, {{mount:/path}}, {{env:NAME}})"
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
    /// The container's `command` and `args` after `$(VAR)` expansion, not yet rewritten.
    pub command: &'a [String],
    pub args: &'a [String],
}

impl Expansion<'_> {
    /// What a container's word or env value means on the host: paths under mounts become host
    /// paths, and the any-address becomes the pod IP.
    pub fn rewrite(&self, word: &str) -> String {
        rewrite_any_addr(&self.mounts.rewrite_word(word), self.ip)
    }
}

/// Replaces the any-address in a word (`0.0.0.0`, `0.0.0.0:8080`, `--host=0.0.0.0`, `::`,
/// `[::]:8080`) with `ip`. In a container it means "every interface of the pod"; here every pod
/// shares the host's interfaces, so binding it would clash with every other pod on the same port.
pub fn rewrite_any_addr(word: &str, ip: Ipv4Addr) -> String {
    let sub = |v: &str| -> Option<String> {
        if v == "0.0.0.0" || v == "::" || v == "[::]" {
            return Some(ip.to_string());
        }
        let port = v
            .strip_prefix("0.0.0.0:")
            .or_else(|| v.strip_prefix("[::]:"))?;
        Some(format!("{ip}:{port}"))
    };
    if let Some(s) = sub(word) {
        return s;
    }
    if let Some((flag, value)) = word.split_once('=') {
        if let Some(s) = sub(value) {
            return format!("{flag}={s}");
        }
    }
    word.to_string()
}

impl Template {
    pub fn expand(&self, x: &Expansion<'_>) -> Result<Vec<String>, String> {
        let mut argv = Vec::new();
        for word in &self.words {
            match word {
                Word::Words(sel) => {
                    let (cmd, args): (&[String], &[String]) = match sel {
                        Sel::All => (x.command, x.args),
                        Sel::Command => (x.command, &[]),
                        Sel::ArgsOnly => (&[], x.args),
                    };
                    argv.extend(cmd.iter().chain(args).map(|a| x.rewrite(a)));
                }
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
                                out.push_str(&x.rewrite(&value));
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
                    // Extra slashes must not make `rel` absolute, which `join` would take as
                    // a replacement for `host`.
                    let rel = rest.strip_prefix('/')?.trim_start_matches('/');
                    Some((mp.len(), host.join(rel)))
                }
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, p)| p)
    }

    /// Rewrites the container paths in a command-line word to host paths, so that programs
    /// meant to run inside a container find their files on the host. A path is rewritten where
    /// it starts the word or follows a separator (`--flag=/path`, `PATH=/a:/b`, or a path
    /// inside an `sh -c` script); one that is under no mount is left alone.
    pub fn rewrite_word(&self, word: &str) -> String {
        let mut out = String::with_capacity(word.len());
        let mut rest = word;
        let mut after_sep = true;
        while let Some(c) = rest.chars().next() {
            if c == '/' && after_sep {
                let end = rest.find(is_sep).unwrap_or(rest.len());
                let token = &rest[..end];
                // `//host/...` after a `scheme:` is a URL, not a path.
                let path = (!token.starts_with("//")).then(|| self.host_path(token));
                match path.flatten() {
                    Some(host) => {
                        out.push_str(&host.to_string_lossy());
                        // `cp x /mnt/` and `cp x /mnt` differ when the target is missing.
                        if token.ends_with('/') && !out.ends_with('/') {
                            out.push('/');
                        }
                    }
                    None => out.push_str(token),
                }
                rest = &rest[end..];
                after_sep = false;
                continue;
            }
            out.push(c);
            after_sep = is_sep(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// Characters that end a path inside a word (and may start one).
fn is_sep(c: char) -> bool {
    c.is_whitespace() || "=:;,'\"<>()|&`".contains(c)
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
        let command = vec!["/vscode/cli/code".to_string()];
        let args = vec![
            "--data=/vscode/data/u".to_string(),
            "/etc/passwd".to_string(),
            "--host".to_string(),
            "0.0.0.0".to_string(),
            "--bind=[::]:80".to_string(),
        ];
        let argv = t
            .expand(&Expansion {
                ip: Ipv4Addr::new(127, 0, 0, 9),
                port: Some(8000),
                mounts: &m,
                env: &env,
                command: &command,
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
                "--bind=127.0.0.9:80",
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
            command: &[],
            args: &[],
        });
        assert!(none.is_err());
        assert!("x{command}".parse::<Template>().is_err());
        let t: Template = "/bin/tool {args-only}".parse().expect("valid");
        let only = t.expand(&Expansion {
            ip: Ipv4Addr::LOCALHOST,
            port: None,
            mounts: &m,
            env: &[],
            command: &["/tool".to_string()],
            args: &["a".to_string()],
        });
        assert_eq!(only.expect("expands"), ["/bin/tool", "a"]);
    }

    #[test]
    fn mount_prefix_is_per_component() {
        let m = mounts();
        assert_eq!(m.host_path("/vscodex"), None);
        assert_eq!(
            m.rewrite_word("cp -r /opt/x /vscode/ && echo ok >/vscode/data/f;ls /vscodex"),
            "cp -r /opt/x /state/pvc/ns/claim/ && echo ok >/state/pods/u/data/f;ls /vscodex"
        );
        assert_eq!(
            m.rewrite_word("PATH=/bin:/vscode/bin http://h/vscode/a"),
            "PATH=/bin:/state/pvc/ns/claim/bin http://h/vscode/a"
        );
        let mut root = Mounts::default();
        root.add("/", PathBuf::from("/r"));
        assert_eq!(root.rewrite_word("http://x/y"), "http://x/y");
        assert_eq!(root.rewrite_word("/a//b"), "/r/a//b");
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
