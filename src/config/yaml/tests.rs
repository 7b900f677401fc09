use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sample {
    name: EnvString,
    #[serde(default, rename = "ipRange")]
    #[allow(dead_code)]
    ip_range: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    window: Option<HumanDuration>,
}

fn err(text: &str) -> FileError {
    parse_str::<Sample>(Path::new("policies/abac.yaml"), text).unwrap_err()
}

#[test]
fn unknown_key_names_position_and_suggestion() {
    let e = err("name: x\nipRnage: 10.0.0.0/8\n");
    assert_eq!(e.line, Some(2));
    assert_eq!(e.column, Some(1));
    assert!(
        e.message
            .contains("unknown key 'ipRnage' (did you mean 'ipRange'?)"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("policies/abac.yaml:2:1: unknown key"),
        "{e}"
    );
}

#[test]
fn bad_duration_is_located() {
    let e = err("name: x\nwindow: 30 parsecs\n");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("invalid duration '30 parsecs'"), "{e}");
}

#[test]
fn durations_parse() {
    for (raw, secs) in [("30s", 30), ("5m", 300), ("24h", 86400), ("1h30m", 5400)] {
        assert_eq!(parse_duration(raw), Ok(Duration::from_secs(secs)));
    }
    let s: Sample = parse_str(Path::new("x"), "name: a\nwindow: 45\n").unwrap();
    assert_eq!(s.window, Some(HumanDuration(Duration::from_secs(45))));
}

#[test]
fn env_expansion() {
    let env = |n: &str| (n == "SET").then(|| "value".to_string());
    assert_eq!(expand_with("a ${SET} b", env).unwrap(), "a value b");
    assert_eq!(expand_with("${UNSET:-dflt}", env).unwrap(), "dflt");
    assert_eq!(expand_with("${UNSET:-}", env).unwrap(), "");
    assert_eq!(expand_with("${SET:-dflt}", env).unwrap(), "value");
    assert!(expand_with("${UNSET}", env)
        .unwrap_err()
        .contains("UNSET is not set"));
    assert!(expand_with("${OPEN", env)
        .unwrap_err()
        .contains("unterminated"));
    assert!(expand_with("${a b}", env)
        .unwrap_err()
        .contains("invalid variable name"));
}

#[test]
fn unset_variable_is_located_error() {
    let e = err("name: ${MOLTGATE_TEST_SURELY_UNSET}\n");
    assert_eq!(e.line, Some(1), "{e}");
    assert!(
        e.message.contains("MOLTGATE_TEST_SURELY_UNSET is not set"),
        "{e}"
    );
}

#[test]
fn nested_unknown_key_keeps_suggestion() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        inner: Vec<Sample>,
    }
    let e = parse_str::<Outer>(Path::new("f.yaml"), "inner:\n  - name: x\n    ipRnage: y\n")
        .unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.contains("did you mean 'ipRange'"), "{e}");
}

#[test]
fn nested_error_drops_the_yaml_path() {
    assert_eq!(
        strip_yaml_path("policies[2].conditions.time: invalid time window '9-5'"),
        "invalid time window '9-5'"
    );
    assert_eq!(
        strip_yaml_path("routes[0]: missing field `path`"),
        "missing field `path`"
    );
    assert_eq!(
        strip_yaml_path("invalid type: string"),
        "invalid type: string"
    );
    assert_eq!(strip_yaml_path("name: x"), "name: x");
}

/// `parse_all` reports an error in each bad item and keeps the good ones.
#[test]
fn parse_all_goes_on_after_an_error_in_an_item() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        items: Items<Sample>,
    }
    let text = "items:\n  - name: a\n  - name: b\n    ipRnage: x\n  - { name: c, window: forever }\n  - name: d\n";
    let (file, errors) = parse_all::<File>(Path::new("f.yaml"), text);
    let names: Vec<String> = file
        .map(|f| f.items.0.into_iter().map(|s| s.name.0).collect())
        .unwrap_or_default();
    assert_eq!(names, ["a", "d"]);
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[0].starts_with("f.yaml:4:5: unknown key 'ipRnage'"),
        "{shown:?}"
    );
    assert!(shown[1].starts_with("f.yaml:5:"), "{shown:?}");
    assert!(shown[1].contains("invalid duration 'forever'"), "{shown:?}");
    // An error outside every item ends the report; plain parsing is unchanged.
    let (file, errors) = parse_all::<File>(Path::new("f.yaml"), "itms: []\n");
    assert!(file.is_none() && errors.len() == 1);
    assert!(parse_str::<File>(Path::new("f.yaml"), text).is_err());
    let joined = FileError::collect(errors.into_iter().chain(shown_errors()));
    let joined = joined.unwrap_or_else(|| panic!("no errors"));
    assert_eq!(joined.count(), 3);
    assert_eq!(joined.to_string().lines().count(), 3);
    assert_eq!(joined.clone().split().len(), 3);
}

fn shown_errors() -> Vec<FileError> {
    vec![
        FileError::whole(Path::new("a"), "one"),
        FileError::at(Path::new("b"), Some((1, 2)), "two"),
    ]
}

#[test]
fn syntax_error_is_located() {
    let e = err("name: [unclosed\n");
    assert!(e.line.is_some(), "{e}");
}

/// A map of lists, like `roles:` in permissions.yaml: an alias bomb
/// that every type accepts.
type Roles = std::collections::BTreeMap<String, Vec<String>>;

#[test]
fn a_file_over_the_size_limit_is_refused_before_parsing() {
    let text = format!("a: [{}]\n", "x, ".repeat(MAX_BYTES / 3));
    let e = parse_str::<Roles>(Path::new("p.yaml"), &text).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "p.yaml: the file is {} bytes; the limit is {MAX_BYTES} bytes (16 MiB)",
            text.len()
        )
    );
    let (v, errors) = parse_all::<Roles>(Path::new("p.yaml"), &text);
    assert!(v.is_none() && errors.len() == 1 && errors[0] == e);
    // Exactly the limit is fine.
    let fits = format!("a: [{}]\n", "x".repeat(MAX_BYTES - 6));
    assert_eq!(fits.len(), MAX_BYTES);
    assert!(parse_str::<Roles>(Path::new("p.yaml"), &fits).is_ok());
}

#[test]
fn a_file_over_the_size_limit_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, vec![b'#'; MAX_BYTES + 1]).unwrap();
    let e = load_file::<Roles>(&path).unwrap_err();
    assert!(
        e.message.ends_with(&format!(
            "is {} bytes; the limit is {MAX_BYTES} bytes (16 MiB)",
            MAX_BYTES + 1
        )),
        "{e}"
    );
}

#[test]
fn nesting_deeper_than_the_limit_is_refused_where_it_crosses() {
    let deep = |n: usize| format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
    let e = parse_str::<IgnoredAny>(Path::new("d.yaml"), &deep(65)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "d.yaml:1:67: lists and maps are nested more than 64 deep; the limit is 64"
    );
    // The map at the top is the first level.
    assert!(parse_str::<IgnoredAny>(Path::new("d.yaml"), &deep(63)).is_ok());
    // Past the scanner's own look-ahead bound (255): same message,
    // at once, however deep (libyaml would take minutes for this).
    let start = std::time::Instant::now();
    let e = parse_str::<IgnoredAny>(Path::new("d.yaml"), &deep(400_000)).unwrap_err();
    assert!(
        e.message
            .starts_with("lists and maps are nested more than 64"),
        "{e}"
    );
    assert_eq!(e.line, Some(1));
    assert!(start.elapsed() < Duration::from_secs(5));
    // Block nesting counts the same.
    let mut block = String::new();
    for i in 0..70 {
        block.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
    }
    let e = parse_str::<IgnoredAny>(Path::new("d.yaml"), &block).unwrap_err();
    assert_eq!((e.line, e.column), (Some(65), Some(129)), "{e}");
}

#[test]
fn aliases_that_expand_past_the_limit_are_refused_at_the_alias() {
    // One list of 20 000 repeated by 2 000 aliases: 100 KiB that expand
    // to 40 million strings (serde_yaml took 45 s and 5 GiB for it).
    let mut text = format!("r0: &a [{}]\n", vec!["x"; 20_000].join(", "));
    for i in 1..2_000 {
        text.push_str(&format!("r{i}: *a\n"));
    }
    let e = parse_str::<Roles>(Path::new("permissions.yaml"), &text).unwrap_err();
    assert_eq!(
            e.to_string(),
            "permissions.yaml:6:5: alias '*a' makes aliases expand to more than 100000 values; the limit is 100000"
        );
    // The classic "billion laughs": each level repeats the one before.
    let mut laughs = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        laughs.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
    }
    let e = parse_str::<IgnoredAny>(Path::new("b.yaml"), &laughs).unwrap_err();
    assert!(e.to_string().starts_with("b.yaml:6:"), "{e}");
    assert!(
        e.message.starts_with("alias '*l4' makes aliases expand"),
        "{e}"
    );
    // Anchors shared a few times are fine, as keys too.
    let shared = "a: &n [x, y]\nb: *n\nc: *n\n";
    let roles = parse_str::<Roles>(Path::new("p.yaml"), shared).unwrap();
    assert_eq!(roles["c"], ["x", "y"]);
}

#[test]
fn a_key_written_twice_is_refused_at_its_second_occurrence() {
    // A map keeps the last value without a word: refused after parsing.
    let e = parse_str::<Roles>(Path::new("p.yaml"), "a: [x]\nb: [y]\na: [z]\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "p.yaml:3:1: duplicate key 'a' (first at line 1, column 1)"
    );
    // Quoting does not make another key; every duplicate is reported.
    let e = parse_str::<IgnoredAny>(Path::new("p.yaml"), "a: []\n\"a\": []\nb: {c: 1, c: 2}\n");
    let shown = e.map(|_| ()).unwrap_err().to_string();
    assert_eq!(
            shown,
            "p.yaml:2:1: duplicate key 'a' (first at line 1, column 1)\np.yaml:3:11: duplicate key 'c' (first at line 3, column 5)"
        );
    // The same key in different maps is fine.
    assert!(parse_str::<IgnoredAny>(Path::new("p.yaml"), "a: {k: 1}\nb: {k: 2}\n").is_ok());
    // A struct's duplicate field is moved from the struct to the field.
    let e = err("name: a\nwindow: 5s\nname: b\n");
    assert_eq!(
        e.to_string(),
        "policies/abac.yaml:3:1: duplicate key 'name' (first at line 1, column 1)"
    );
    // An error that deserializing finds first is shown as it was before.
    let e = err("ipRnage: x\nname: a\nname: b\n");
    assert_eq!(
            e.to_string(),
            "policies/abac.yaml:1:1: unknown key 'ipRnage' (did you mean 'ipRange'?); expected one of: name, ipRange, window"
        );
}

#[test]
fn parse_all_reports_every_duplicate_once_the_file_parses() {
    #[derive(Debug, Deserialize)]
    struct File {
        #[allow(dead_code)]
        items: Items<Roles>,
    }
    let text = "items:\n  - {a: [x], a: [y]}\n  - {b: [x], b: [y]}\n";
    let (file, errors) = parse_all::<File>(Path::new("f.yaml"), text);
    assert!(file.is_none());
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "f.yaml:2:14: duplicate key 'a' (first at line 2, column 6)",
            "f.yaml:3:14: duplicate key 'b' (first at line 3, column 6)"
        ]
    );
}

/// libyaml still explains a syntax error its own way, and reads a tab
/// after `key:`, which the guard's parser alone would refuse.
#[test]
fn syntax_errors_and_tabs_read_as_before() {
    let e = parse_str::<Roles>(Path::new("s.yaml"), "a: [x, y\n").unwrap_err();
    assert_eq!(
            e.to_string(),
            "s.yaml:2:1: did not find expected ',' or ']' at line 2 column 1, while parsing a flow sequence"
        );
    let roles = parse_str::<Roles>(Path::new("s.yaml"), "a:\t[x]\nb: [\"y\n\tz\"]\n").unwrap();
    assert_eq!(roles["a"], ["x"]);
    assert_eq!(roles["b"], ["y z"]);
    // What libyaml reads but the guard cannot check is refused, located.
    let e = parse_str::<Roles>(Path::new("s.yaml"), "a: [x]#note\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.yaml:1:7: comments must be separated from other tokens by whitespace"
    );
}

#[test]
fn suggestions() {
    assert_eq!(
        did_you_mean("ipRnage", ["time", "ipRange", "deviceType"]),
        Some("ipRange")
    );
    assert_eq!(did_you_mean("zzzzzz", ["time", "ipRange"]), None);
    assert_eq!(locate("a: 1\n  bb: 2\n", "bb"), Some((2, 3)));
}
