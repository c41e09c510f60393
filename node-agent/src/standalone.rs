//! Standalone mode: the same VirtualService manifests, without a cluster.
//!
//! Manifests are read from files, checked with the API's own validation (and
//! for unknown fields, which an API server would prune), and resolved into this
//! host's desired state by the controller's translation, run locally with this
//! host as the only node: it directs every service, and it is a real server of
//! those whose real servers include one of its addresses.
//!
//! A change costs what changed, not what exists: [`Manifests`] re-reads only
//! files whose size, change time or inode moved, and parses only documents whose
//! text is new; [`LocalState`] translates only the VirtualServices that changed
//! (conflicts settled as the controller settles them, the older wins), patches
//! the desired spec in place and names the service keys the engine must plan.
//! A cold start parses and translates on every core.
//!
//! `apply` without `--once` is a source and a sink of the agent's loop
//! ([`crate::supervisor`]): a thread reads the manifests when inotify (or SIGHUP)
//! says they changed and sends the new desired state with the keys it changes;
//! the loop's rounds are logged.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, hash_map::DefaultHasher},
    fmt,
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lvs_crds::{
    lvs_node::{
        DirectorState, DirectorVip, IpvsService, IpvsServiceKey, LvsNodeSpec, RealServerState, RealServerVip,
    },
    translate::{
        Age, DEFAULT_VRRP_PRIORITY, DIRECTOR_LABEL, NodePart, ObjectId, TranslateOptions,
        VRRP_PRIORITY_ANNOTATION, Verdict, claim, merge_director_settings, merge_director_vips, object_id,
        qualified_name, translate_for_node,
    },
    validation::validate,
    virtual_service::{Protocol, VirtualService},
    yaml,
};

use crate::{
    desired::service_key,
    dry_run::{self, DryRunOptions},
    endpoints::{AgentMetrics, Endpoints, IpvsMetrics},
    engine::{Changed, Engine, Round, Scope},
    host::address,
    supervisor::{Coalesce, DesiredState, InboxSender, Input, Sink, Supervisor, Why, inbox},
};
use kube::Resource;
use tracing::{error, info, warn};

/// What this host does with the manifests (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// A real server of the services that list one of this host's addresses
    /// among their real servers, a director of the rest.
    #[default]
    Auto,
    /// A director of every service: IPVS rules, VIPs, health checks, VRRP.
    Director,
    /// A real server only: the VIPs to accept (on lvs0 or a tunnel device) and
    /// the ARP sysctls, no IPVS rules.
    RealServer,
}

/// A manifest that cannot be used, with where it came from.
#[derive(Debug, Clone)]
pub struct ManifestError {
    pub source: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Reads every VirtualService in `path` (a YAML file, possibly with several
/// documents, or a directory of `*.yaml`/`*.yml` files, read in name order) and
/// validates it. Every problem is reported, not only the first.
pub fn load_manifests(path: &Path) -> Result<Vec<VirtualService>, Vec<ManifestError>> {
    let mut manifests = Manifests::new(path);
    let change = manifests.load(None);
    if change.errors.is_empty() {
        Ok(manifests.services().map(|vs| (*vs).clone()).collect())
    } else {
        Err(change.errors)
    }
}

fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| e.to_string())?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| is_manifest(p))
        .collect();
    files.sort();
    Ok(files)
}

fn is_manifest(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml")
}

/// One document of a file, or what is wrong with it (without its source,
/// which depends on its place).
type Parsed = Result<Document, Vec<String>>;

/// What a document holds.
#[derive(Debug)]
enum Document {
    Service(Arc<VirtualService>),
    /// An object of another apiVersion or kind: skipped, with a warning.
    Other {
        api_version: String,
        kind: String,
    },
    /// Nothing (`null`, `{}`).
    Empty,
}

impl Document {
    fn service(&self) -> Option<&Arc<VirtualService>> {
        match self {
            Document::Service(vs) => Some(vs),
            _ => None,
        }
    }
}

#[cfg(test)]
type AfterRead = Box<dyn FnMut(&Path) + Send>;

/// The manifests as last read: each file's documents, parsed and validated once
/// per distinct text.
pub struct Manifests {
    path: PathBuf,
    files: BTreeMap<PathBuf, ManifestFile>,
    /// How many documents define each (namespace, name): more than one is an error.
    definitions: HashMap<ObjectId, usize>,
    /// How many of them are defined more than once.
    duplicated: usize,
    /// Called after each file's read: a test's write racing with it.
    #[cfg(test)]
    after_read: Option<AfterRead>,
}

/// A file's size, change time and inode.
type Stamp = (u64, Option<SystemTime>, u64);

struct ManifestFile {
    /// Size, change time and inode when read: unchanged, the file is not read again.
    stamp: Option<Stamp>,
    /// Each document's text hash and what it holds.
    documents: Vec<(u64, Arc<Parsed>)>,
    /// The problems of its documents, named by file and document (kept, so
    /// that a change elsewhere does not look at every document again).
    errors: Vec<ManifestError>,
}

impl ManifestFile {
    fn new(path: &Path, stamp: Option<Stamp>, documents: Vec<(u64, Arc<Parsed>)>) -> Self {
        let mut file = ManifestFile { stamp, documents, errors: Vec::new() };
        for (index, (_, parsed)) in file.documents.iter().enumerate() {
            match parsed.as_ref() {
                Err(messages) => {
                    let source = file.source(path, index);
                    file.errors.extend(
                        messages.iter().map(|message| ManifestError {
                            source: source.clone(),
                            message: message.clone(),
                        }),
                    );
                }
                Ok(Document::Other { api_version, kind }) => {
                    let source = file.source(path, index);
                    warn!(
                        %source, api_version, kind,
                        "skipped: not a VirtualService of {}", VirtualService::api_version(&())
                    );
                }
                Ok(_) => {}
            }
        }
        file
    }

    /// How errors name document `index`: by the file alone when it could not be read.
    fn source(&self, path: &Path, index: usize) -> String {
        if self.stamp.is_none() && self.documents.len() == 1 {
            path.display().to_string()
        } else {
            format!("{} (document {})", path.display(), index + 1)
        }
    }
}

/// What a load found changed since the previous one.
#[derive(Default)]
pub struct ManifestChange {
    /// VirtualServices gone or replaced, then the new and replacing ones.
    pub removed: Vec<Arc<VirtualService>>,
    pub added: Vec<Arc<VirtualService>>,
    /// Every problem of the manifests as they are now (not only of the changed files).
    pub errors: Vec<ManifestError>,
}

impl ManifestChange {
    /// Whether no VirtualService changed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }

    /// Takes a later change in: the two as one. A VirtualService added by the
    /// first and removed by the second was never applied, so it is in neither
    /// list; the problems are the later change's (those of the manifests now).
    fn absorb(&mut self, newer: ManifestChange) {
        for vs in newer.removed {
            match self.added.iter().position(|added| Arc::ptr_eq(added, &vs)) {
                Some(at) => drop(self.added.remove(at)),
                None => self.removed.push(vs),
            }
        }
        self.added.extend(newer.added);
        self.errors = newer.errors;
    }
}

impl Manifests {
    pub fn new(path: &Path) -> Self {
        Manifests {
            path: path.to_path_buf(),
            files: BTreeMap::new(),
            definitions: HashMap::new(),
            duplicated: 0,
            #[cfg(test)]
            after_read: None,
        }
    }

    /// Reads what changed. With `force` (SIGHUP), every file is read again.
    pub fn reload(&mut self, force: bool) -> ManifestChange {
        if force {
            self.files.values_mut().for_each(|file| file.stamp = None);
        }
        self.load(None)
    }

    /// Reads what changed in `named` files (inotify's), and the files new or
    /// gone; the others are not looked at (a change costs what it touches).
    pub fn reload_named(&mut self, named: &BTreeSet<PathBuf>) -> ManifestChange {
        self.load(Some(named))
    }

    fn load(&mut self, named: Option<&BTreeSet<PathBuf>>) -> ManifestChange {
        let mut change = ManifestChange::default();
        let files = match manifest_files(&self.path) {
            Ok(files) => files,
            Err(message) => {
                change.errors.push(ManifestError { source: self.path.display().to_string(), message });
                return change;
            }
        };
        // Files gone.
        let gone: Vec<PathBuf> = self.files.keys().filter(|f| !files.contains(f)).cloned().collect();
        for file in gone {
            let old = self.files.remove(&file).expect("listed");
            self.forget(&old.documents, &mut change);
        }
        // Files new or changed: their documents' texts, then the new texts parsed
        // (on every core when there are many).
        // Each read file with its stamp and its documents' (hash, text).
        type Read<'t> = (PathBuf, Option<Stamp>, Vec<(u64, &'t str)>);
        let mut read: Vec<Read<'_>> = Vec::new();
        let mut texts: Vec<(PathBuf, Option<Stamp>, String)> = Vec::new();
        for file in &files {
            if named.is_some_and(|named| !named.contains(file)) && self.files.contains_key(file) {
                continue;
            }
            // Taken before the read and recorded: a write during the read
            // changes the file's stamp after it, so the next load reads again.
            let stamp = std::fs::metadata(file).ok().map(|m| (m.len(), m.modified().ok(), m.ino()));
            if stamp.is_some() && self.files.get(file).is_some_and(|cached| cached.stamp == stamp) {
                continue;
            }
            let text = std::fs::read_to_string(file);
            #[cfg(test)]
            if let Some(hook) = &mut self.after_read {
                hook(file);
            }
            match text {
                Ok(text) => texts.push((file.clone(), stamp, text)),
                Err(e) => {
                    let documents = self.files.remove(file).map(|f| f.documents).unwrap_or_default();
                    self.forget(&documents, &mut change);
                    let error = vec![e.to_string()];
                    let entry = ManifestFile::new(file, None, vec![(0, Arc::new(Err(error)))]);
                    self.files.insert(file.clone(), entry);
                }
            }
        }
        for (file, stamp, text) in &texts {
            read.push((file.clone(), *stamp, split_documents(text).map(|d| (text_hash(d), d)).collect()));
        }
        let known: HashMap<u64, Arc<Parsed>> = read
            .iter()
            .filter_map(|(file, _, _)| self.files.get(file))
            .flat_map(|f| f.documents.iter().cloned())
            .collect();
        let new_texts: Vec<&str> = {
            let mut seen = BTreeSet::new();
            read.iter()
                .flat_map(|(_, _, documents)| documents)
                .filter(|(hash, _)| !known.contains_key(hash) && seen.insert(*hash))
                .map(|(_, text)| *text)
                .collect()
        };
        let parsed: HashMap<u64, Arc<Parsed>> =
            parallel_map(&new_texts, |text| Arc::new(parse_document(text)))
                .into_iter()
                .zip(&new_texts)
                .map(|(parsed, text)| (text_hash(text), parsed))
                .collect();
        for (file, stamp, documents) in read {
            let documents: Vec<(u64, Arc<Parsed>)> = documents
                .into_iter()
                .map(|(hash, _)| {
                    let parsed = known.get(&hash).or_else(|| parsed.get(&hash)).expect("parsed above");
                    (hash, Arc::clone(parsed))
                })
                .collect();
            let old = self.files.remove(&file).map(|f| f.documents).unwrap_or_default();
            // Unchanged documents (same text) are neither removed nor added.
            let old_hashes: BTreeSet<u64> = old.iter().map(|(hash, _)| *hash).collect();
            let new_hashes: BTreeSet<u64> = documents.iter().map(|(hash, _)| *hash).collect();
            let removed: Vec<_> = old.into_iter().filter(|(h, _)| !new_hashes.contains(h)).collect();
            let added: Vec<_> = documents.iter().filter(|(h, _)| !old_hashes.contains(h)).cloned().collect();
            self.forget(&removed, &mut change);
            for vs in added.iter().filter_map(|(_, parsed)| parsed.as_ref().as_ref().ok()?.service().cloned())
            {
                self.count_definition(&vs, true);
                change.added.push(vs);
            }
            self.files.insert(file.clone(), ManifestFile::new(&file, stamp, documents));
        }
        change.errors = self.errors();
        change
    }

    fn forget(&mut self, documents: &[(u64, Arc<Parsed>)], change: &mut ManifestChange) {
        for vs in documents.iter().filter_map(|(_, parsed)| parsed.as_ref().as_ref().ok()?.service().cloned())
        {
            self.count_definition(&vs, false);
            change.removed.push(vs);
        }
    }

    /// One document more (or fewer) defines `vs`'s name; `duplicated` follows.
    fn count_definition(&mut self, vs: &VirtualService, defined: bool) {
        let id = object_id(vs);
        let before = self.definitions.get(&id).copied().unwrap_or(0);
        let after = if defined { before + 1 } else { before.saturating_sub(1) };
        match after {
            0 => self.definitions.remove(&id),
            _ => self.definitions.insert(id, after),
        };
        match (before > 1, after > 1) {
            (false, true) => self.duplicated += 1,
            (true, false) => self.duplicated -= 1,
            _ => {}
        }
    }

    /// Every problem, by file and document.
    fn errors(&self) -> Vec<ManifestError> {
        let mut errors: Vec<ManifestError> =
            self.files.values().flat_map(|f| f.errors.iter().cloned()).collect();
        if self.duplicated == 0 {
            return errors;
        }
        for (path, file) in &self.files {
            for (index, (_, parsed)) in file.documents.iter().enumerate() {
                if let Ok(Document::Service(vs)) = parsed.as_ref()
                    && let id = object_id(vs)
                    && self.definitions.get(&id).is_some_and(|n| *n > 1)
                {
                    errors.push(ManifestError {
                        source: file.source(path, index),
                        message: format!("{} is defined more than once", qualified_name(&id)),
                    });
                }
            }
        }
        errors
    }

    /// Every VirtualService of the manifests, in file and document order.
    pub fn services(&self) -> impl Iterator<Item = Arc<VirtualService>> + '_ {
        let documents = self.files.values().flat_map(|f| &f.documents);
        documents.filter_map(|(_, parsed)| parsed.as_ref().as_ref().ok()?.service().cloned())
    }
}

fn text_hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// A file's documents: the text from each `---` line (at the start of a line,
/// followed by a space or the line's end, as YAML's document marker) to the next;
/// the text before the first marker is a document when it holds anything.
pub fn split_documents(text: &str) -> impl Iterator<Item = &str> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']));
        if marker && offset > 0 {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.push(text.len());
    let documents: Vec<&str> = starts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
    documents.into_iter().filter(|d| {
        d.lines().any(|line| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#') && line != "---"
        })
    })
}

/// Applies `f` to every item, on every core when there are many items.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() < 64 || threads < 2 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let f = &f;
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("a parser thread panicked")).collect()
    })
}

/// A document's VirtualService, validated. An object of another apiVersion
/// or kind is skipped; one without them is an error. Unknown fields are
/// errors, named by their path (`spec.healthChek: unknown field`): here only,
/// since the controller reads the same type from an API server that prunes
/// them.
fn parse_document(text: &str) -> Parsed {
    // The common case straight into the typed object; anything else (another
    // kind, several documents, an error to explain) through the generic path.
    let top = |key: &str| text.lines().find_map(|line| line.strip_prefix(key)).map(str::trim);
    let ours = top("apiVersion:") == Some(&*VirtualService::api_version(&()))
        && top("kind:") == Some(&*VirtualService::kind(&()));
    let typed = ours.then(|| {
        let mut unknown = false;
        let vs: Option<VirtualService> = yaml::quick::read(text, |document| {
            serde_ignored::deserialize(document, |path| unknown |= is_unknown(&path))
        })
        .ok();
        vs.filter(|_| !unknown)
    });
    let mut vs = match typed.flatten() {
        Some(vs) => vs,
        None => match parse_generic(text)? {
            Ok(vs) => vs,
            Err(other) => return Ok(other),
        },
    };
    // Kept for as long as the file is unchanged, thousands of them: no spare capacity.
    vs.spec.real_servers.shrink_to_fit();
    match validate(&vs.spec) {
        Ok(()) => Ok(Document::Service(Arc::new(vs))),
        Err(problems) => {
            let name = qualified_name(&object_id(&vs));
            Err(problems.into_iter().map(|p| format!("{name}: {p}")).collect())
        }
    }
}

/// Through a generic value: the object's apiVersion and kind, a bad value
/// named by its field (serde_path_to_error: `spec.port: invalid value: integer
/// 70000, expected u16`), and every unknown field (serde_ignored). The
/// VirtualService, or what else the document holds.
fn parse_generic(text: &str) -> Result<Result<VirtualService, Document>, Vec<String>> {
    let mut found = None;
    let mut other = Document::Empty;
    let documents: Vec<serde_json::Value> = yaml::from_str_multiple(text).map_err(|e| vec![e.to_string()])?;
    for value in documents {
        // Null documents are skipped by the reader already; `{}` is as empty.
        if value.as_object().is_some_and(|m| m.is_empty()) {
            continue;
        }
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            return Err(vec!["not a Kubernetes object: apiVersion and kind are required".into()]);
        };
        if api_version != VirtualService::api_version(&()) || kind != VirtualService::kind(&()) {
            other = Document::Other { api_version, kind };
            continue;
        }
        let mut unknown = Vec::new();
        let mut note = |path: serde_ignored::Path<'_>| {
            if is_unknown(&path) {
                unknown.push(format!("{}: unknown field", field_path(&path)));
            }
        };
        let vs = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut note))
            .map_err(|e| vec![format!("{}: {}", e.path(), e.inner())])?;
        if !unknown.is_empty() {
            return Err(unknown);
        }
        if found.replace(vs).is_some() {
            return Err(vec!["several VirtualServices in one document".into()]);
        }
    }
    Ok(found.ok_or(other))
}

/// Whether a field the type ignored is unknown: the type checks neither
/// apiVersion nor kind, which were checked before.
fn is_unknown(path: &serde_ignored::Path<'_>) -> bool {
    !matches!(path, serde_ignored::Path::Map { parent: serde_ignored::Path::Root, key }
        if key == "apiVersion" || key == "kind")
}

/// A field's path as the validation writes it: `spec.realServers[0].prot`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            field_path(parent)
        }
    }
}

/// This host's desired state for `services`, and the verdict on each service
/// (conflicts between manifests are settled as the controller settles them).
pub fn local_state(
    services: &[VirtualService],
    host: &str,
    local_addresses: &[IpAddr],
    role: Role,
) -> (LvsNodeSpec, BTreeMap<ObjectId, Verdict>) {
    let mut state = LocalState::new(host, role);
    let services: Vec<Arc<VirtualService>> = services.iter().cloned().map(Arc::new).collect();
    state.update(&ManifestChange { added: services, ..ManifestChange::default() }, local_addresses);
    let verdicts = state.by_id.iter().map(|(id, local)| (id.clone(), state.verdict(id, local))).collect();
    (state.spec, verdicts)
}

/// One VirtualService translated alone for this host.
#[derive(Debug, Clone, PartialEq)]
struct Local {
    vs: Arc<VirtualService>,
    /// Its place in the conflict order.
    age: Age,
    /// Its service's key (None when refused on its own: invalid, VIP not allowed).
    key: Option<IpvsServiceKey>,
    verdict: Verdict,
    /// Its service, when this host directs it (shared with the spec's).
    service: Option<Arc<IpvsService>>,
    director_vip: Option<DirectorVip>,
    /// Its VIP, when this host is one of its real servers.
    real_server_vip: Option<RealServerVip>,
    /// Its director settings (forwarding, connection sync).
    settings: Option<DirectorState>,
}

impl Local {
    /// What it claims.
    fn claim(&self) -> Option<IpvsServiceKey> {
        self.key.as_ref().map(claim)
    }
}

/// This host's desired state, kept up to date change by change.
pub struct LocalState {
    host: String,
    role: Role,
    vrrp_priority: u8,
    addresses: Option<Vec<IpAddr>>,
    /// Boxed: a map's nodes hold eleven entries, half of them empty after
    /// sorted inserts, and a Local is large.
    by_id: BTreeMap<ObjectId, Box<Local>>,
    /// Each claimed key's claimants, oldest (the winner) first.
    /// (A sorted Vec: almost always one claimant, and a set's node would be
    /// ten times its size.)
    claims: HashMap<IpvsServiceKey, Vec<Age>>,
    spec: LvsNodeSpec,
}

/// The service keys that hold `claim`: itself, or for a fwmark claim, the
/// keys of each protocol (see [`claim`]).
fn claiming_keys(claim: &IpvsServiceKey) -> Vec<IpvsServiceKey> {
    match claim.fwmark {
        Some(_) => [Protocol::TCP, Protocol::UDP, Protocol::SCTP]
            .map(|protocol| IpvsServiceKey { protocol, ..claim.clone() })
            .to_vec(),
        None => vec![claim.clone()],
    }
}

impl LocalState {
    /// This host's VRRP priority (`--vrrp-priority`), for the next translations.
    pub fn with_vrrp_priority(mut self, priority: u8) -> Self {
        self.vrrp_priority = priority;
        self
    }

    pub fn new(host: &str, role: Role) -> Self {
        let spec = LvsNodeSpec { node: host.into(), chunks: 1, ..LvsNodeSpec::default() };
        LocalState {
            host: host.into(),
            role,
            vrrp_priority: DEFAULT_VRRP_PRIORITY,
            addresses: None,
            by_id: BTreeMap::new(),
            claims: HashMap::new(),
            spec,
        }
    }

    /// The desired spec.
    pub fn spec(&self) -> &LvsNodeSpec {
        &self.spec
    }

    /// The desired state alone, the rest dropped (`apply --once` needs no more).
    pub fn into_spec(self) -> LvsNodeSpec {
        self.spec
    }

    /// Takes a change of the manifests (and the host's addresses); returns the
    /// services whose desired state may have changed and whether the host part
    /// did, and prints the verdicts of the VirtualServices it concerns that are
    /// not accepted.
    pub fn update(&mut self, change: &ManifestChange, addresses: &[IpAddr]) -> Changed {
        let mut dirty: BTreeSet<ObjectId> = BTreeSet::new();
        let mut current: BTreeMap<ObjectId, Option<Arc<VirtualService>>> = BTreeMap::new();
        for vs in &change.removed {
            let id = object_id(vs);
            if self.by_id.get(&id).is_some_and(|local| Arc::ptr_eq(&local.vs, vs)) {
                current.insert(id.clone(), None);
                dirty.insert(id);
            }
        }
        for vs in &change.added {
            let id = object_id(vs);
            current.insert(id.clone(), Some(Arc::clone(vs)));
            dirty.insert(id);
        }
        let addresses = if self.role == Role::Director { &[][..] } else { addresses };
        if self.addresses.as_deref() != Some(addresses) {
            // Where this host is a real server may have changed for any of them.
            self.addresses = Some(addresses.to_vec());
            for (id, local) in &self.by_id {
                current.entry(id.clone()).or_insert_with(|| Some(Arc::clone(&local.vs)));
                dirty.insert(id.clone());
            }
        }
        let node = local_node(&self.host, addresses, self.vrrp_priority);
        let work: Vec<(&ObjectId, &Option<Arc<VirtualService>>)> = current.iter().collect();
        // On this thread: as fast as on several here (it allocates more than it
        // computes), and without the other threads' malloc arenas (megabytes).
        let translated: Vec<Option<Box<Local>>> = work
            .iter()
            .map(|(_, vs)| vs.as_ref().map(|vs| Box::new(self.translate_one(vs, &node))))
            .collect();

        let mut changes: Vec<(ObjectId, Option<Box<Local>>)> = Vec::new();
        for ((id, _), new) in work.into_iter().zip(translated) {
            match (self.by_id.get_mut(id), new) {
                // The same meaning from another document (a comment changed, say):
                // nothing to do but remember the new object, which the next change
                // of that document removes.
                (Some(old), Some(new)) if old == &new => old.vs = new.vs,
                (None, None) => {}
                (_, new) => changes.push((id.clone(), new)),
            }
        }
        let mut keys = BTreeSet::new();
        let mut claims_touched = BTreeSet::new();
        for (id, new) in &changes {
            for local in self.by_id.get(id).map(|old| &**old).into_iter().chain(new.as_deref()) {
                keys.extend(local.service.as_ref().and_then(|s| service_key(&s.key)));
                keys.extend(local.key.as_ref().and_then(service_key));
                claims_touched.extend(local.claim());
            }
        }
        let winner_ages = |state: &Self| -> Vec<Option<Age>> {
            claims_touched.iter().map(|c| state.claims.get(c).and_then(|a| a.first().cloned())).collect()
        };
        let winners_before = winner_ages(self);
        let mut host_part_changed = false;
        fn host_part(
            l: Option<&Local>,
        ) -> Option<(&Option<DirectorVip>, &Option<RealServerVip>, &Option<DirectorState>)> {
            l.map(|l| (&l.director_vip, &l.real_server_vip, &l.settings))
        }
        for (id, new) in changes {
            let old = self.by_id.get(&id).map(|old| &**old);
            host_part_changed |= host_part(old) != host_part(new.as_deref());
            if let Some(old) = old
                && let Some(claim) = old.claim()
                && let Some(claimants) = self.claims.get_mut(&claim)
            {
                if let Ok(at) = claimants.binary_search(&old.age) {
                    claimants.remove(at);
                }
                if claimants.is_empty() {
                    self.claims.remove(&claim);
                }
            }
            if let Some(new) = &new
                && let Some(claim) = new.claim()
            {
                let claimants = self.claims.entry(claim).or_default();
                if let Err(at) = claimants.binary_search(&new.age) {
                    claimants.insert(at, new.age.clone());
                }
            }
            match new {
                Some(new) => self.by_id.insert(id, new),
                None => self.by_id.remove(&id),
            };
        }
        let winners_changed = winner_ages(self) != winners_before;
        // The services of the touched claims, as their winners have them now.
        // The list stays sorted by key, each found and placed by search: a
        // change costs what it touches.
        let mut director = self.spec.director.take().unwrap_or_default();
        let mut services = std::mem::take(&mut director.services);
        for key in claims_touched.iter().flat_map(claiming_keys) {
            if let Ok(at) = services.binary_search_by(|s| s.key.cmp(&key)) {
                services.remove(at);
            }
        }
        for service in claims_touched.iter().filter_map(|c| self.winner(c)?.service.clone()) {
            match services.binary_search_by(|s| s.key.cmp(&service.key)) {
                Ok(at) => services[at] = service,
                Err(at) => services.insert(at, service),
            }
        }
        if host_part_changed || winners_changed {
            self.assemble_host_part(services);
        } else if !services.is_empty() {
            self.spec.director = Some(DirectorState { services, ..director });
        }
        for id in &dirty {
            if let Some(local) = self.by_id.get(id) {
                let verdict = self.verdict(id, local);
                if verdict != Verdict::Accepted {
                    let name = qualified_name(id);
                    warn!(virtual_service = %name, reason = %verdict.message(), "not applied");
                }
            }
        }
        Changed { services: keys, host: host_part_changed || winners_changed }
    }

    fn translate_one(&self, vs: &Arc<VirtualService>, node: &Node) -> Local {
        let part = translate_for_node(vs, node, &TranslateOptions::default());
        // This host directs every service, whatever nodes a cluster would pick
        // (`part.directs` follows the node selector).
        let NodePart {
            verdict,
            mut service,
            mut director_vip,
            mut real_server_vip,
            director_settings: mut settings,
            ..
        } = part;
        let key = (verdict == Verdict::Accepted).then(|| service.as_ref().map(|s| s.key.clone())).flatten();
        let directs = match self.role {
            Role::Director => {
                real_server_vip = None;
                true
            }
            Role::RealServer => false,
            // A real server of a service does not also direct it in auto mode.
            Role::Auto => real_server_vip.is_none(),
        };
        if !directs {
            (service, director_vip, settings) = (None, None, None);
        }
        Local {
            vs: Arc::clone(vs),
            age: Age::of(vs),
            key,
            verdict,
            service,
            director_vip,
            real_server_vip,
            settings,
        }
    }

    fn winner(&self, claim: &IpvsServiceKey) -> Option<&Local> {
        let age = self.claims.get(claim)?.first()?;
        self.by_id.get(&age.id).map(|local| &**local)
    }

    /// Accepted, or refused alone, or the loser of a conflict.
    fn verdict(&self, id: &ObjectId, local: &Local) -> Verdict {
        let Some(claim) = local.claim() else { return local.verdict.clone() };
        match self.claims.get(&claim).and_then(|c| c.first()) {
            Some(winner) if winner.id != *id => Verdict::conflict(winner.id.clone(), &claim),
            _ => Verdict::Accepted,
        }
    }

    /// The winners, in the order of their service keys, as the translation
    /// merges them (not of their claims: fwmark services of two protocols sort
    /// the other way by claim, which ignores the protocol).
    fn winners(&self) -> Vec<&Local> {
        let mut winners: Vec<&Local> = self.claims.keys().filter_map(|claim| self.winner(claim)).collect();
        winners.sort_by(|a, b| a.key.cmp(&b.key));
        winners
    }

    /// The VIPs and settings, from all winners (when any of them changed).
    fn assemble_host_part(&mut self, services: Vec<Arc<IpvsService>>) {
        let winners = self.winners();
        let real_server_vips: Vec<RealServerVip> =
            winners.iter().filter_map(|l| l.real_server_vip.clone()).collect();
        let mut director_vips: Vec<DirectorVip> = winners
            .iter()
            .filter_map(|l| l.director_vip.clone())
            .filter(|vip| !real_server_vips.iter().any(|r| r.address == vip.address))
            .collect();
        merge_director_vips(&mut director_vips);
        let director = merge_director_settings(winners.iter().filter_map(|l| l.settings.as_ref()));
        self.spec.director = director.map(|d| DirectorState { services, vips: director_vips, ..d });
        self.spec.real_server =
            (!real_server_vips.is_empty()).then_some(RealServerState { vips: real_server_vips });
    }
}

/// The one node of a standalone "cluster": this host, a director, with its addresses.
fn local_node(host: &str, addresses: &[IpAddr], vrrp_priority: u8) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(host.into()),
            labels: Some([(DIRECTOR_LABEL.0.to_string(), DIRECTOR_LABEL.1.to_string())].into()),
            // As a cluster node carries it.
            annotations: Some([(VRRP_PRIORITY_ANNOTATION.to_string(), vrrp_priority.to_string())].into()),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|a| NodeAddress { type_: "InternalIP".into(), address: a.to_string() })
                    .collect(),
            ),
            ..NodeStatus::default()
        }),
        ..Node::default()
    }
}

/// `lvs-agent apply`'s options.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub path: PathBuf,
    pub once: bool,
    pub dry_run: bool,
    pub role: Role,
    pub state_dir: PathBuf,
    pub sysctl_root: PathBuf,
    pub exclusive: bool,
    pub resync: Duration,
    /// This director's VRRP priority, 1-254.
    pub vrrp_priority: u8,
    /// Where to serve /metrics, /healthz and /readyz, if anywhere.
    pub metrics_address: Option<SocketAddr>,
    /// What /metrics reads of the kernel's IPVS table: nothing, services, or real servers too.
    pub metrics_ipvs: IpvsMetrics,
}

/// What wakes the manifests' reader.
#[derive(Debug)]
pub enum Event {
    /// These manifest files changed (or may have).
    Manifests(BTreeSet<PathBuf>),
    /// SIGHUP: read every manifest again.
    Reload,
}

/// A change of the manifests as the reader thread sends it to the loop, which
/// translates it (the reader never copies the whole state).
pub struct ManifestUpdate {
    change: ManifestChange,
    /// The host's addresses (for a role that can be a real server).
    addresses: Vec<IpAddr>,
}

/// Two updates not yet taken by the loop are one: both changes, the newer addresses.
impl Coalesce for ManifestUpdate {
    fn absorb(&mut self, newer: ManifestUpdate) {
        self.change.absorb(newer.change);
        self.addresses = newer.addresses;
    }
}

impl DesiredState for LocalState {
    type Update = ManifestUpdate;

    fn spec(&self) -> &LvsNodeSpec {
        LocalState::spec(self)
    }

    fn update(&mut self, update: ManifestUpdate) -> Changed {
        LocalState::update(self, &update.change, &update.addresses)
    }
}

/// How `apply` ended (its exit code tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything applied (with `once`), or the agent stopped gracefully.
    Applied,
    /// The manifests did not load: nothing was changed.
    NotLoaded,
    /// Applied, except what failed (logged by name).
    PartlyFailed,
}

/// Applies the manifests at `options.path`; without `once`, keeps them applied:
/// reloads on change (inotify) and on SIGHUP, repairs drift every `resync`, and
/// looks again when a drain ends. Returns how it ended, or the error that
/// stopped it.
pub fn apply(options: &ApplyOptions) -> Result<Outcome> {
    let (events, changes) = mpsc::channel();
    let (inputs_tx, inputs) = inbox();
    if !options.once && !options.dry_run {
        // Before the first read, so that a change made while applying is seen.
        watch_manifests(&options.path, events.clone());
        watch_signals(events, inputs_tx.clone())?;
    }
    let mut manifests = Manifests::new(&options.path);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".into(), |h| h.trim().to_string());
    let mut state = LocalState::new(&host, options.role).with_vrrp_priority(options.vrrp_priority);
    let mut pending = ManifestChange::default();
    let Some(first) = load(&mut manifests, &mut pending, None, options) else {
        return Ok(Outcome::NotLoaded);
    };
    state.update(&first.change, &first.addresses);
    if options.dry_run {
        print_plan(state.spec(), options);
        return Ok(Outcome::Applied);
    }
    let mut engine = Engine::open(&options.state_dir, &options.sysctl_root, options.exclusive)?;
    if options.once {
        // The manifests and their translations go before the kernel work, which
        // needs memory of its own: the agent's peak stays that of one of them.
        drop(manifests);
        let spec = state.into_spec();
        // No health checks, no VRRP: this host holds every VIP it directs.
        let round = engine.reconcile(&spec, Scope::Full);
        log_round(&round, "applied");
        return Ok(if round.failures.is_empty() { Outcome::Applied } else { Outcome::PartlyFailed });
    }

    // Health checks and VRRP run on this runtime; the loop on this thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lvs-agent-tasks")
        .enable_all()
        .build()?;
    let metrics = Arc::new(AgentMetrics::default());
    if let Some(address) = options.metrics_address {
        let endpoints = Endpoints::new(Arc::clone(&metrics), options.resync, options.metrics_ipvs);
        let listener =
            std::net::TcpListener::bind(address).with_context(|| format!("listening on {address}"))?;
        let ended = endpoints.spawn(listener).context("serving /metrics")?;
        runtime.spawn(async move {
            if let Ok(error) = ended.await {
                warn!(%error, "serving /metrics");
            }
        });
    }
    let agent = Supervisor::new(engine, runtime.handle().clone(), &inputs_tx);
    // The first round is the state as loaded: nothing more to take in.
    let addresses = first.addresses;
    let nothing_more = ManifestUpdate { change: ManifestChange::default(), addresses: addresses.clone() };
    let _ = inputs_tx.send(Input::Desired(nothing_more));
    let source_options = options.clone();
    std::thread::Builder::new().name("manifests".into()).spawn(move || {
        read_manifests(&changes, &inputs_tx, manifests, pending, addresses, &source_options);
    })?;
    agent.run(state, &inputs, &mut LogSink { metrics }, options.resync);
    Ok(Outcome::Applied)
}

/// The source of standalone mode: reads the manifests again at each event (all
/// of those queued at once) and sends what changed in them (and in the host's
/// addresses), when anything did (SIGHUP: always).
fn read_manifests(
    events: &mpsc::Receiver<Event>,
    inputs: &InboxSender<ManifestUpdate>,
    mut manifests: Manifests,
    mut pending: ManifestChange,
    mut addresses: Vec<IpAddr>,
    options: &ApplyOptions,
) {
    while let Ok(event) = events.recv() {
        // Every event queued, at once: the files they name, or all of them.
        let mut named = Some(BTreeSet::new());
        for event in std::iter::once(event).chain(events.try_iter()) {
            match (event, &mut named) {
                (Event::Manifests(files), Some(named)) => named.extend(files),
                (Event::Manifests(_), None) => {}
                (Event::Reload, _) => named = None,
            }
        }
        let force = named.is_none();
        match load(&mut manifests, &mut pending, named.as_ref(), options) {
            Some(update) if update.change.is_empty() && update.addresses == addresses && !force => {}
            Some(update) => {
                addresses.clone_from(&update.addresses);
                if inputs.send(Input::Desired(update)).is_err() {
                    return;
                }
            }
            // A manifest that does not load leaves what is applied untouched.
            None => warn!("keeping the last good manifests applied"),
        }
    }
}

/// The sink of standalone mode: each round's operations and failures, logged,
/// and counted for /metrics.
struct LogSink {
    metrics: Arc<AgentMetrics>,
}

impl Sink<LocalState> for LogSink {
    fn round(&mut self, why: Why, desired: &LocalState, round: Round, agent: &Supervisor) -> bool {
        if matches!(why, Why::Startup | Why::Applied) {
            self.metrics.desired(desired.spec());
        }
        self.metrics.round(&round, matches!(why, Why::Startup | Why::Repaired { finished: true }), agent);
        let verb = match why {
            Why::Startup | Why::Applied => "applied",
            Why::Health => "health",
            Why::Drained => "drained",
            Why::Repaired { .. } => "repaired",
        };
        log_round(&round, verb);
        true
    }
}

/// SIGHUP reloads every manifest; SIGTERM and SIGINT stop the agent gracefully.
fn watch_signals(events: mpsc::Sender<Event>, inputs: InboxSender<ManifestUpdate>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let sent = if signal == SIGHUP {
                events.send(Event::Reload).is_ok()
            } else {
                inputs.send(Input::Stop).is_ok()
            };
            if !sent {
                return;
            }
        }
    });
    Ok(())
}

/// Reads the manifests' changes; returns them with the host's addresses, or
/// `None` (errors logged) when the manifests do not load: then nothing is
/// taken, and the change waits in `pending` for the next good load.
fn load(
    manifests: &mut Manifests,
    pending: &mut ManifestChange,
    named: Option<&BTreeSet<PathBuf>>,
    options: &ApplyOptions,
) -> Option<ManifestUpdate> {
    let mut change = match named {
        Some(named) => manifests.reload_named(named),
        None => manifests.reload(true),
    };
    let errors = std::mem::take(&mut change.errors);
    // Kept until a load is taken: a change is never lost behind a bad manifest.
    pending.absorb(change);
    if !errors.is_empty() {
        for problem in errors {
            error!(source = %problem.source, problem = %problem.message, "bad manifest");
        }
        return None;
    }
    // Only a role that can be a real server needs them (to find out where it is one).
    let addresses: Vec<IpAddr> = if options.role == Role::Director {
        vec![]
    } else {
        match address::local_addresses() {
            Ok(addresses) => addresses.into_iter().map(|a| a.address).collect(),
            Err(e) if options.dry_run => {
                warn!(error = %format!("{e:#}"), "local addresses unknown; assuming none");
                vec![]
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "local addresses");
                return None;
            }
        }
    };
    Some(ManifestUpdate { change: std::mem::take(pending), addresses })
}

/// Tells `events` whenever a manifest under `path` may have changed: inotify on
/// the directory (or the file's directory, since editors replace files by
/// renaming). Without inotify, only SIGHUP reads the manifests again.
fn watch_manifests(path: &Path, events: mpsc::Sender<Event>) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    // A file's events name it as the reader knows it (`path`), a directory's
    // files as the directory listing does.
    let (directory, only) = if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        (parent.to_path_buf(), path.file_name().map(|n| (n.to_os_string(), path.to_path_buf())))
    };
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE;
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC).and_then(|i| i.add_watch(&directory, flags).map(|_| i));
    match inotify {
        Ok(inotify) => {
            std::thread::spawn(move || {
                loop {
                    let found = match inotify.read_events() {
                        Ok(found) => found,
                        Err(e) => {
                            warn!(error = %e, "watching the manifests failed: changes are read on SIGHUP only");
                            return;
                        }
                    };
                    // A full inotify queue drops events: read everything again.
                    if found.iter().any(|event| event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)) {
                        if events.send(Event::Reload).is_err() {
                            return;
                        }
                        continue;
                    }
                    let named: BTreeSet<PathBuf> = found
                        .iter()
                        .filter_map(|event| event.name.as_ref())
                        .filter_map(|name| match &only {
                            Some((only, file)) => (name == only).then(|| file.clone()),
                            None => is_manifest(Path::new(name)).then(|| directory.join(name)),
                        })
                        .collect();
                    if !named.is_empty() && events.send(Event::Manifests(named)).is_err() {
                        return;
                    }
                }
            });
        }
        // No polling instead: SIGHUP still reads every manifest again.
        Err(e) => warn!(
            directory = %directory.display(),
            error = %e,
            "no inotify on the manifests' directory: changes are read on SIGHUP only"
        ),
    }
}

/// `--dry-run`: everything applying would change on this host (see
/// [`crate::dry_run`]), printed; nothing is changed.
fn print_plan(spec: &LvsNodeSpec, options: &ApplyOptions) {
    let options = DryRunOptions {
        state_dir: &options.state_dir,
        sysctl_root: &options.sysctl_root,
        exclusive: options.exclusive,
        once: options.once,
    };
    print!("{}", dry_run::plan(spec, options).render());
}

fn log_round(round: &Round, verb: &str) {
    for line in &round.applied {
        info!(rule = %line, "{verb}");
    }
    for failure in &round.failures {
        warn!(subject = %failure.subject, error = %failure, "failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
    }

    #[test]
    fn the_examples_load() {
        let services = load_manifests(&examples()).unwrap();
        assert_eq!(services.len(), 4);
    }

    /// What the loop is told: a change of real servers alone leaves the host
    /// part (VIPs, VRRP) unread; another VIP does not.
    #[test]
    fn an_update_says_whether_the_host_part_changed() {
        let web = |weight: u32, vip: &str| -> Arc<VirtualService> {
            let yaml = format!(
                "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: web, namespace: default}}\n\
                 spec: {{vip: {vip}, port: 80, forwarding: DirectRouting, \
                 realServers: [{{address: 198.51.100.1, weight: {weight}}}]}}\n"
            );
            Arc::new(lvs_crds::yaml::from_str(&yaml).unwrap())
        };
        let mut state = LocalState::new("director1", Role::Director);
        let mut replace = |old: Option<Arc<VirtualService>>, new: &Arc<VirtualService>| {
            let change = ManifestChange {
                removed: old.into_iter().collect(),
                added: vec![Arc::clone(new)],
                errors: vec![],
            };
            state.update(&change, &[])
        };
        let first = web(1, "192.0.2.100");
        let changed = replace(None, &first);
        assert!(changed.host && changed.services.len() == 1, "{changed:?}");
        let weight = web(2, "192.0.2.100");
        let changed = replace(Some(first), &weight);
        assert!(!changed.host && changed.services.len() == 1, "{changed:?}");
        let changed = replace(Some(weight), &web(2, "192.0.2.101"));
        assert!(changed.host && changed.services.len() == 2, "{changed:?}");
    }

    #[test]
    fn a_director_gets_the_services_and_a_real_server_its_vip() {
        let services = load_manifests(&examples().join("dr.yaml")).unwrap();
        let director = "192.168.16.11".parse().unwrap();
        let (spec, verdicts) = local_state(&services, "director1", &[director], Role::Auto);
        assert!(verdicts.values().all(|v| *v == Verdict::Accepted));
        let director_state = spec.director.expect("directs");
        assert_eq!(director_state.services.len(), 1);
        assert_eq!(director_state.services[0].destinations.len(), 2);
        assert!(spec.real_server.is_none());

        let rs1 = "192.168.16.21".parse().unwrap();
        let (spec, _) = local_state(&services, "rs1", &[rs1], Role::Auto);
        assert!(spec.director.is_none_or(|d| d.services.is_empty()));
        assert_eq!(spec.real_server.expect("serves").vips[0].address.to_string(), "192.168.16.100");
    }

    #[test]
    fn bad_manifests_are_all_reported_by_file_and_field() {
        let dir = std::env::temp_dir().join(format!("lvs-agent-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("bad.yaml"),
            "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  vip: 10.0.0.1\n  port: 80\n  forwarding: DirectRouting\n  realServers: [{address: 10.0.0.2, port: 8080}]\n---\napiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: b}\nspec: {vip: 10.0.0.1, port: 70000, realServers: [{address: 10.0.0.2}]}\n",
        )
        .unwrap();
        let errors = load_manifests(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0].contains("bad.yaml (document 1)") && text[0].contains("spec.realServers[0].port: 8080"),
            "{text:#?}"
        );
        assert!(text[1].contains("(document 2)") && text[1].contains("70000"), "{text:#?}");
    }

    /// A fresh directory of manifests for one test.
    fn manifest_dir(test: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lvs-agent-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    const WEB: &str = "apiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {name: web}\nspec: {vip: 10.0.0.1, port: 80, realServers: [{address: 10.0.0.2}]}\n";

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let dir = manifest_dir(
            "unknown-fields",
            &[(
                "typos.yaml",
                &format!(
                    "{WEB}---\napiVersion: lvs.dev/v1alpha1\nkind: VirtualService\nmetadata: {{name: b}}\nspec:\n  vip: 10.0.0.1\n  port: 81\n  schedular: rr\n  healthChek: {{type: TCP}}\n  realServers: [{{address: 10.0.0.2, prot: 80}}]\n"
                ),
            )],
        );
        let errors = load_manifests(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        text.sort();
        let file = dir.join("typos.yaml");
        let file = file.display();
        assert_eq!(
            text,
            [
                format!("{file} (document 2): spec.healthChek: unknown field"),
                format!("{file} (document 2): spec.realServers[0].prot: unknown field"),
                format!("{file} (document 2): spec.schedular: unknown field"),
            ]
        );
    }

    #[test]
    fn other_api_versions_and_kinds_are_skipped_and_objects_need_them() {
        let istio = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n";
        let config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n";
        let dir =
            manifest_dir("other-kinds", &[("all.yaml", &format!("{istio}---\n{WEB}---\n{config_map}"))]);
        let services = load_manifests(&dir).unwrap();
        assert_eq!(services.iter().map(|vs| vs.metadata.name.clone().unwrap()).collect::<Vec<_>>(), ["web"]);
        let parsed = parse_document(istio).unwrap();
        assert!(
            matches!(&parsed, Document::Other { api_version, kind }
                if api_version == "networking.istio.io/v1beta1" && kind == "VirtualService"),
            "{parsed:?}"
        );

        std::fs::write(dir.join("all.yaml"), "metadata: {name: web}\nspec: {vip: 10.0.0.1, port: 80}\n")
            .unwrap();
        let errors = load_manifests(&dir).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [format!(
                "{} (document 1): not a Kubernetes object: apiVersion and kind are required",
                dir.join("all.yaml").display()
            )]
        );
    }

    #[test]
    fn a_write_during_the_read_is_read_next_time() {
        let dir = manifest_dir("racing-write", &[("web.yaml", WEB)]);
        let file = dir.join("web.yaml");
        let mut manifests = Manifests::new(&dir);
        // The file changes just after it was read: the stamp recorded must be
        // the one the read saw, so that the next load sees the change.
        let changed = WEB.replace("port: 80", "port: 8080");
        let mut once = Some(changed.clone());
        manifests.after_read = Some(Box::new(move |path| {
            if let Some(text) = once.take() {
                std::fs::write(path, text).unwrap();
            }
        }));
        let first = manifests.load(None);
        assert_eq!(first.added.len(), 1);
        assert_eq!(first.added[0].spec.port, Some(80));
        let second = manifests.reload(false);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(second.added.iter().map(|vs| vs.spec.port).collect::<Vec<_>>(), [Some(8080)]);
        assert_eq!(std::fs::read_to_string(&file).ok(), None);
    }

    /// inotify's names: only those files are read again, and the files new or
    /// gone are still seen.
    #[test]
    fn a_named_reload_reads_the_named_files_and_those_new_or_gone() {
        let other = WEB.replace("name: web", "name: other").replace("10.0.0.1", "10.0.0.3");
        let dir = manifest_dir("named", &[("web.yaml", WEB), ("other.yaml", &other)]);
        let mut manifests = Manifests::new(&dir);
        assert_eq!(manifests.reload(false).added.len(), 2);
        // Both change (with another length: the stamp changes within the
        // clock's tick too); only one is named.
        std::fs::write(dir.join("web.yaml"), WEB.replace("port: 80", "port: 8080")).unwrap();
        std::fs::write(dir.join("other.yaml"), other.replace("port: 80", "port: 8081")).unwrap();
        let named = manifests.reload_named(&[dir.join("web.yaml")].into());
        assert_eq!(named.added.iter().map(|vs| vs.spec.port).collect::<Vec<_>>(), [Some(8080)]);
        // A new file and a file gone, with nothing named.
        std::fs::write(
            dir.join("new.yaml"),
            WEB.replace("name: web", "name: new").replace("10.0.0.1", "10.0.0.4"),
        )
        .unwrap();
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        let listed = manifests.reload_named(&BTreeSet::new());
        let names = |list: &[Arc<VirtualService>]| {
            list.iter().map(|vs| kube::ResourceExt::name_any(&**vs)).collect::<Vec<_>>()
        };
        assert_eq!(
            (names(&listed.added), names(&listed.removed)),
            (vec!["new".to_string()], vec!["web".to_string()])
        );
        // The one not named is read at the next full reload.
        let full = manifests.reload(true);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(full.added.iter().any(|vs| vs.spec.port == Some(8081)), "{:?}", names(&full.added));
    }
}
