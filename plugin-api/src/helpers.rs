//! Small helpers plugins share, re-exported from [`crate::sdk`]: `null` read as the
//! default value, and retries.

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

/// A `deserialize_with` function that reads JSON `null` as the field's default value, as
/// Go's decoder leaves a field at its zero value (upstream clients send `null` for unset
/// lists, maps and strings):
///
/// ```
/// #[derive(serde::Deserialize, Default)]
/// #[serde(default)]
/// struct Config {
///     #[serde(deserialize_with = "plugin_api::sdk::nullable")]
///     targets: Vec<String>,
/// }
/// let c: Config = serde_json::from_str(r#"{"targets": null}"#).unwrap();
/// assert!(c.targets.is_empty());
/// ```
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Calls `f` until it succeeds: at most `tries` attempts (at least one), `pause` apart,
/// and no new attempt once `deadline` (if any) has passed. Returns the first success or
/// the last error.
pub fn retry<T, E>(
    tries: usize,
    pause: Duration,
    deadline: Option<Instant>,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= tries || deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(e)
            }
            Err(_) => std::thread::sleep(pause),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default)]
    struct Config {
        #[serde(deserialize_with = "nullable")]
        enabled: bool,
        #[serde(deserialize_with = "nullable")]
        name: String,
        #[serde(deserialize_with = "nullable")]
        list: Vec<u32>,
        #[serde(deserialize_with = "nullable")]
        map: BTreeMap<String, String>,
    }

    #[test]
    fn null_reads_as_the_default_and_values_are_kept() {
        let nulls: Config =
            serde_json::from_str(r#"{"enabled": null, "name": null, "list": null, "map": null}"#)
                .unwrap();
        assert_eq!(nulls, Config::default());
        let set: Config = serde_json::from_str(
            r#"{"enabled": true, "name": "a", "list": [1, 2], "map": {"k": "v"}}"#,
        )
        .unwrap();
        assert_eq!(
            set,
            Config {
                enabled: true,
                name: "a".into(),
                list: vec![1, 2],
                map: BTreeMap::from([("k".into(), "v".into())]),
            }
        );
        // Absent fields are `#[serde(default)]`'s business; wrong types are still errors.
        assert_eq!(
            serde_json::from_str::<Config>("{}").unwrap(),
            Config::default()
        );
        let err = serde_json::from_str::<Config>(r#"{"list": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("expected a sequence"), "{err}");
    }

    #[test]
    fn retry_stops_at_the_first_success() {
        let mut calls = 0;
        let got: Result<u32, String> = retry(5, Duration::ZERO, None, || {
            calls += 1;
            if calls < 3 {
                Err(format!("fail {calls}"))
            } else {
                Ok(calls)
            }
        });
        assert_eq!((got, calls), (Ok(3), 3));
    }

    #[test]
    fn retry_gives_the_last_error_after_all_tries() {
        let mut calls = 0;
        let started = Instant::now();
        let got: Result<(), String> = retry(4, Duration::from_millis(20), None, || {
            calls += 1;
            Err(format!("fail {calls}"))
        });
        assert_eq!((got, calls), (Err("fail 4".to_string()), 4));
        // Three pauses between four attempts.
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn retry_tries_once_even_with_zero_tries() {
        let mut calls = 0;
        let got: Result<(), &str> = retry(0, Duration::from_secs(60), None, || {
            calls += 1;
            Err("no")
        });
        assert_eq!((got, calls), (Err("no"), 1));
    }

    #[test]
    fn retry_makes_no_new_attempt_past_the_deadline() {
        let mut calls = 0;
        let deadline = Instant::now() + Duration::from_millis(300);
        let got: Result<(), usize> =
            retry(1000, Duration::from_millis(200), Some(deadline), || {
                calls += 1;
                Err(calls)
            });
        // Attempts at about 0, 200 and 400 ms; the one at 400 ms is past the deadline.
        assert_eq!(got, Err(calls));
        assert!((2..=3).contains(&calls), "{calls} attempts");
        // A deadline already passed still allows the first attempt.
        let mut calls = 0;
        let past = Instant::now() - Duration::from_secs(1);
        let got: Result<(), ()> = retry(10, Duration::from_secs(60), Some(past), || {
            calls += 1;
            Err(())
        });
        assert_eq!((got, calls), (Err(()), 1));
    }
}
