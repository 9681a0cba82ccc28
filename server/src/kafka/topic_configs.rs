//! A topic's Kafka configs: which keys Cairn takes, what each may be, and what
//! `DescribeConfigs` reports. Shared by `create_topics`, `alter_configs` and
//! `describe_configs`, so the three agree on every key.
//!
//! The rule for keys (docs/DESIGN.md §7): `retention.ms` and `retention.bytes` are the
//! settable ones (-1 = no limit, else at least 1). The others Cairn reports
//! (`FIXED_CONFIGS`) are accepted only with the value Cairn applies anyway, so a tool that
//! sends its defaults (`cleanup.policy=delete`, `min.insync.replicas=1`) works, and one that
//! asks for what Cairn does not do (`cleanup.policy=compact`) is told so. Any other key is
//! refused with INVALID_CONFIG: accepting a setting that is then not applied would let a
//! user believe, say, that a topic compacts or replicates.

use cairn_engine::RetentionPolicy;

use crate::operation::RetentionChange;

/// Kafka's `retention.ms`.
pub(super) const RETENTION_MS: &str = "retention.ms";
/// Kafka's `retention.bytes`.
pub(super) const RETENTION_BYTES: &str = "retention.bytes";

/// Configs whose value is fixed by what Cairn is: name and the only value each may have.
pub(super) const FIXED_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("message.timestamp.type", "CreateTime"),
    ("min.insync.replicas", "1"),
];

/// Why a config was refused (INVALID_CONFIG), for the response's message.
pub(super) type ConfigRefusal = String;

/// A retention value as Kafka writes it: -1 is no limit, 1 or more a limit; 0, other
/// negatives and anything not a number are refused.
pub(super) fn parse_retention(
    name: &str,
    value: Option<&str>,
) -> Result<Option<u64>, ConfigRefusal> {
    let Some(value) = value else {
        return Err(format!("{name} needs a value (-1 for no limit)"));
    };
    match value.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(limit) if limit >= 1 => Ok(Some(limit.unsigned_abs())),
        Ok(0) => Err(format!(
            "{name}=0 would remove every record as soon as it is written; use -1 for no limit"
        )),
        Ok(_) | Err(_) => Err(format!(
            "{name}={value} is not valid: -1 (no limit) or a positive integer"
        )),
    }
}

/// Sets config `name` to `value` in `change` (a retention limit), or checks that it is a
/// fixed config with Cairn's value; refuses everything else.
pub(super) fn set(
    change: &mut RetentionChange,
    name: &str,
    value: Option<&str>,
) -> Result<(), ConfigRefusal> {
    match name {
        RETENTION_MS => change.ms = Some(parse_retention(name, value)?),
        RETENTION_BYTES => change.bytes = Some(parse_retention(name, value)?),
        _ => check_fixed(name, value)?,
    }
    Ok(())
}

/// Returns config `name` to its default in `change`: no limit for retention; the fixed
/// configs are always at theirs.
pub(super) fn delete(change: &mut RetentionChange, name: &str) -> Result<(), ConfigRefusal> {
    match name {
        RETENTION_MS => change.ms = Some(None),
        RETENTION_BYTES => change.bytes = Some(None),
        _ if FIXED_CONFIGS.iter().any(|(fixed, _)| *fixed == name) => {}
        _ => return Err(unknown(name)),
    }
    Ok(())
}

fn check_fixed(name: &str, value: Option<&str>) -> Result<(), ConfigRefusal> {
    let Some((_, fixed_value)) = FIXED_CONFIGS.iter().find(|(fixed, _)| *fixed == name) else {
        return Err(unknown(name));
    };
    let value = value.unwrap_or_default();
    if value == *fixed_value {
        return Ok(());
    }
    Err(match name {
        "cleanup.policy" => format!(
            "cleanup.policy={value} is not supported: Cairn keeps a topic's history or removes \
             its oldest records by retention (delete); it does not compact"
        ),
        _ => format!("{name}={value} is not supported: Cairn applies {name}={fixed_value}"),
    })
}

fn unknown(name: &str) -> ConfigRefusal {
    format!(
        "config {name} is not supported: Cairn applies only retention.ms, retention.bytes and \
         its fixed values of cleanup.policy, message.timestamp.type, min.insync.replicas"
    )
}

/// One config as `DescribeConfigs` and `CreateTopics` report it.
pub(super) struct ConfigEntry {
    pub(super) name: &'static str,
    pub(super) value: String,
    /// Kafka's `ConfigType`.
    pub(super) config_type: i8,
    pub(super) read_only: bool,
    /// Kafka's `ConfigSource`: set on the topic, or Cairn's default.
    pub(super) source: i8,
}

/// Kafka's `ConfigSource.DYNAMIC_TOPIC_CONFIG`: set on the topic.
pub(super) const SOURCE_TOPIC: i8 = 1;
/// Kafka's `ConfigSource.DEFAULT_CONFIG`.
pub(super) const SOURCE_DEFAULT: i8 = 5;

/// Kafka's `ConfigType` codes (DescribeConfigs v3 and later).
pub(super) const TYPE_BOOLEAN: i8 = 1;
pub(super) const TYPE_STRING: i8 = 2;
pub(super) const TYPE_INT: i8 = 3;
pub(super) const TYPE_LONG: i8 = 5;

/// The retention configs of a topic with `retention`: the topic's value when it sets a
/// limit, else the default, -1 (keep forever: Cairn's default, where Kafka's is 7 days).
pub(super) fn retention_entries(retention: RetentionPolicy) -> [ConfigEntry; 2] {
    let entry = |name, limit: Option<u64>| ConfigEntry {
        name,
        value: limit.map_or_else(|| "-1".to_owned(), |limit| limit.to_string()),
        config_type: TYPE_LONG,
        read_only: false,
        source: if limit.is_some() {
            SOURCE_TOPIC
        } else {
            SOURCE_DEFAULT
        },
    };
    [
        entry(RETENTION_MS, retention.ms),
        entry(RETENTION_BYTES, retention.bytes),
    ]
}

/// The fixed configs, as entries (read-only, default).
pub(super) fn fixed_entries() -> impl Iterator<Item = ConfigEntry> {
    FIXED_CONFIGS.iter().map(|(name, value)| ConfigEntry {
        name,
        value: (*value).to_owned(),
        config_type: if *name == "min.insync.replicas" {
            TYPE_INT
        } else {
            TYPE_STRING
        },
        read_only: true,
        source: SOURCE_DEFAULT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_values_follow_kafka_with_zero_refused() {
        assert_eq!(parse_retention(RETENTION_MS, Some("-1")), Ok(None));
        assert_eq!(
            parse_retention(RETENTION_MS, Some("604800000")),
            Ok(Some(604_800_000))
        );
        for bad in ["0", "-2", "1.5", "", "forever", "99999999999999999999"] {
            assert!(
                parse_retention(RETENTION_BYTES, Some(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(parse_retention(RETENTION_MS, None).is_err());
    }

    #[test]
    fn set_and_delete_change_only_retention_and_refuse_what_cairn_does_not_do() {
        let mut change = RetentionChange::default();
        set(&mut change, RETENTION_MS, Some("1000")).unwrap();
        set(&mut change, "cleanup.policy", Some("delete")).unwrap();
        assert_eq!(
            change,
            RetentionChange {
                ms: Some(Some(1000)),
                bytes: None
            }
        );
        delete(&mut change, RETENTION_BYTES).unwrap();
        delete(&mut change, "cleanup.policy").unwrap();
        assert_eq!(change.bytes, Some(None));
        let compact = set(&mut change, "cleanup.policy", Some("compact")).unwrap_err();
        assert!(compact.contains("does not compact"), "{compact}");
        assert!(set(&mut change, "min.insync.replicas", Some("2")).is_err());
        assert!(set(&mut change, "segment.ms", Some("1000")).is_err());
        assert!(delete(&mut change, "segment.ms").is_err());
    }

    #[test]
    fn described_retention_says_whether_the_topic_sets_it() {
        let [ms, bytes] = retention_entries(RetentionPolicy {
            ms: Some(5),
            bytes: None,
        });
        assert_eq!(
            (ms.value.as_str(), ms.source, ms.read_only),
            ("5", SOURCE_TOPIC, false)
        );
        assert_eq!(
            (bytes.value.as_str(), bytes.source, bytes.read_only),
            ("-1", SOURCE_DEFAULT, false)
        );
    }
}
