//! Times the host-side phases of one weight change in a large manifest
//! directory, as `lvs-agent apply` (watching) goes through them before the
//! kernel is asked: for tests/bench/agent-apply (where do the milliseconds go?).
//!
//!   change_phases DIR      (DIR as tests/bench/gen-manifests writes it; a copy is edited)
//!
//! Prints `PHASE name seconds` and `MEMORY name ...` per phase of the change round.

#[path = "common/phases.rs"]
mod phases;

use phases::phase;

use lvs_agent::standalone::{LocalState, Manifests, Role};

fn main() {
    let source = std::env::args().nth(1).expect("usage: change_phases DIR");
    let dir = std::env::temp_dir().join(format!("change-phases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    for entry in std::fs::read_dir(&source).expect("DIR") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
    }
    let mut manifests = Manifests::new(&dir);
    let mut state = LocalState::new("bench", Role::Director);
    let change = phase("first-load", || manifests.reload(false));
    phase("first-update", || state.update(&change, &[]));

    // One weight in the middle of the first file, as weight_watch changes it.
    let file = dir.join("services-00.yaml");
    let text = std::fs::read_to_string(&file).expect("services-00.yaml");
    let at = text.len() / 2 + text[text.len() / 2..].find("weight: ").expect("a weight") + "weight: ".len();
    let end = at + text[at..].find('}').expect("closing brace");
    let new = format!("{}{}{}", &text[..at], 99, &text[end..]);
    std::fs::write(&file, new).expect("write");

    let change = phase("reload", || manifests.reload(false));
    println!("COUNT removed={} added={}", change.removed.len(), change.added.len());
    let keys = phase("update", || state.update(&change, &[]));
    println!("COUNT keys={}", keys.services.len());
    let director = state.spec().director.as_ref().expect("directs");
    phase("health-targets", || lvs_agent::convert::health_targets(director).len());
    if std::env::var_os("CHANGE_PHASES_LOOP").is_some() {
        // For a profiler: the change round, again and again.
        for weight in 0..3000 {
            let edited = format!("{}{}{}", &text[..at], weight % 50 + 1, &text[end..]);
            std::fs::write(&file, edited).expect("write");
            let change = manifests.reload(false);
            state.update(&change, &[]);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
