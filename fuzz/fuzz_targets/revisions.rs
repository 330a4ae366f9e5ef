//! `_revisions` of a replicated document: whatever the JSON, a path of revisions or a 400,
//! never a panic; an accepted path counts down one generation at a time from `start` to at
//! least 1, and every revision in it prints as it parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_core::Rev;
use outpost_server::fuzzing::parse_revisions;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = outpost_core::json::from_slice(data) else {
        return;
    };
    let Ok(path) = parse_revisions(value.clone()) else {
        return;
    };
    let start = value["start"]
        .as_u64()
        .expect("accepted without a numeric start");
    assert_eq!(path.first().map(|r| r.generation), Some(start));
    for pair in path.windows(2) {
        assert_eq!(pair[0].generation, pair[1].generation + 1);
    }
    assert!(path.last().is_some_and(|r| r.generation >= 1));
    for rev in &path {
        assert_eq!(&rev.to_string().parse::<Rev>().unwrap(), rev);
    }
});
