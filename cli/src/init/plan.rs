//! Which workloads become services, built from which main package, forwarding which ports: the
//! decisions of `kdev init`, as pure functions of what [`super::detect`] found.

use std::collections::BTreeSet;

use super::detect::WorkloadFound;

/// One service `kdev init` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedService {
    /// A DNS label, the workload's name.
    pub name: String,
    pub workload: WorkloadFound,
    /// The main package (`.`, `./cmd/orders`).
    pub package: String,
    /// `(local, remote)` port pairs: the container's ports, moved up locally where another
    /// service already forwards the same number.
    pub ports: Vec<(u16, u16)>,
}

/// A question only the developer can answer: which main package builds `workload` (the index
/// into `choices`, or `None`: not a service, applied as the manifests say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub workload: WorkloadFound,
    pub choices: Vec<String>,
}

/// What pairing decided, and what it could not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pairing {
    /// Workloads paired with a package, in the manifests' order.
    pub paired: Vec<(WorkloadFound, String)>,
    /// Workloads left as the manifests say (a database, a cache), with why.
    pub left: Vec<(WorkloadFound, String)>,
    /// What must be asked (or given with `--service`) before the plan is complete.
    pub questions: Vec<Question>,
}

/// The last element of a package path: `./cmd/orders` → `orders`; `.` → `""`.
fn leaf(package: &str) -> &str {
    package
        .rsplit('/')
        .next()
        .filter(|l| *l != ".")
        .unwrap_or("")
}

/// The packages whose name matches the workload's (or its image's): `orders` builds
/// `deployment/orders` and `deployment/orders-api`, and an image `shop-orders:dev`.
fn name_matches<'a>(w: &WorkloadFound, mains: &'a [String]) -> Vec<&'a String> {
    let exact: Vec<&String> = mains.iter().filter(|m| leaf(m) == w.name).collect();
    if !exact.is_empty() {
        return exact;
    }
    let image = w
        .image
        .as_deref()
        .map(|i| i.rsplit('/').next().unwrap_or(i))
        .map(|i| i.split([':', '@']).next().unwrap_or(i))
        .unwrap_or("");
    let words = |s: &str| -> BTreeSet<String> {
        s.split(['-', '_', '.'])
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (name_words, image_words) = (words(&w.name), words(image));
    mains
        .iter()
        .filter(|m| {
            let l = leaf(m);
            !l.is_empty() && (name_words.contains(l) || image_words.contains(l))
        })
        .collect()
}

/// Pair workloads with main packages. `preferred`: the package `.air.toml` builds.
///
/// - One workload: it is the service; its package is the only main package, else the preferred
///   one, else the one its name matches, else a question.
/// - Several: each workload whose name (or image) names exactly one main package is paired with
///   it. If none matched and there is one main package, which workload it builds is a question
///   for every workload; otherwise unmatched workloads are left as the manifests say (a
///   Deployment of postgres or redis is not built from this module).
pub fn pair(workloads: &[WorkloadFound], mains: &[String], preferred: Option<&str>) -> Pairing {
    let mut out = Pairing::default();
    let preferred = preferred.filter(|p| mains.iter().any(|m| m == p));
    if let [w] = workloads {
        let matched = name_matches(w, mains);
        let package = match (mains, preferred, matched.as_slice()) {
            ([only], _, _) => Some(only.clone()),
            (_, Some(p), _) => Some(p.to_string()),
            (_, None, [one]) => Some((*one).clone()),
            _ => None,
        };
        match package {
            Some(p) => out.paired.push((w.clone(), p)),
            None => out.questions.push(Question {
                workload: w.clone(),
                choices: mains.to_vec(),
            }),
        }
        return out;
    }
    let mut unmatched = Vec::new();
    for w in workloads {
        match name_matches(w, mains).as_slice() {
            [one] => out.paired.push((w.clone(), (*one).clone())),
            [] => unmatched.push(w.clone()),
            several => out.questions.push(Question {
                workload: w.clone(),
                choices: several.iter().map(|s| (*s).clone()).collect(),
            }),
        }
    }
    if out.paired.is_empty() && out.questions.is_empty() {
        // Nothing matched by name: only the developer knows which workload is theirs.
        out.questions = unmatched
            .into_iter()
            .map(|w| Question {
                workload: w,
                choices: mains.to_vec(),
            })
            .collect();
    } else {
        out.left = unmatched
            .into_iter()
            .map(|w| {
                let why = "no main package of this module is named like it".to_string();
                (w, why)
            })
            .collect();
    }
    out
}

/// The services, with local ports made unique: the first service keeps its container's port
/// numbers; a later one whose port is taken gets the next free number locally (`8081:8080`).
pub fn services(paired: &[(WorkloadFound, String)]) -> Vec<PlannedService> {
    let mut taken = BTreeSet::new();
    paired
        .iter()
        .map(|(w, package)| {
            let ports = w
                .ports
                .iter()
                .map(|&remote| {
                    let mut local = remote;
                    while taken.contains(&local) {
                        local = local.checked_add(1).unwrap_or(1024);
                    }
                    taken.insert(local);
                    (local, remote)
                })
                .collect();
            PlannedService {
                name: w.name.clone(),
                workload: w.clone(),
                package: package.clone(),
                ports,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, image: &str, ports: &[u16]) -> WorkloadFound {
        WorkloadFound {
            kind: "deployment",
            name: name.into(),
            container: Some("app".into()),
            image: Some(image.into()),
            ports: ports.to_vec(),
        }
    }

    fn mains(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_workload_takes_the_only_main_package_or_the_one_air_builds() {
        let p = pair(&[w("api", "x/api", &[8080])], &mains(&["."]), None);
        assert_eq!(p.paired, [(w("api", "x/api", &[8080]), ".".to_string())]);
        let two = mains(&["./cmd/server", "./tools/gen"]);
        let p = pair(&[w("api", "x/api", &[])], &two, Some("./cmd/server"));
        assert_eq!(p.paired[0].1, "./cmd/server");
        // Air's package must be one of the module's main packages.
        let p = pair(&[w("api", "x/api", &[])], &two, Some("./elsewhere"));
        assert_eq!(p.questions.len(), 1);
        assert_eq!(p.questions[0].choices, two);
        let p = pair(&[w("gen", "x/y", &[])], &two, None);
        assert_eq!(p.paired[0].1, "./tools/gen");
    }

    #[test]
    fn several_workloads_pair_by_name_or_image_and_leave_the_rest() {
        let ws = [
            w("orders", "kdev.local/shop-orders:dev", &[8080]),
            w("frontend", "kdev.local/shop-gateway:dev", &[8080]),
            w("redis", "redis:7", &[6379]),
        ];
        let p = pair(&ws, &mains(&["./cmd/gateway", "./cmd/orders"]), None);
        assert_eq!(
            p.paired
                .iter()
                .map(|(w, p)| (w.name.as_str(), p.as_str()))
                .collect::<Vec<_>>(),
            [("orders", "./cmd/orders"), ("frontend", "./cmd/gateway")]
        );
        assert_eq!(p.left.len(), 1);
        assert_eq!(p.left[0].0.name, "redis");
        assert!(p.questions.is_empty());
    }

    #[test]
    fn nothing_matching_by_name_is_asked() {
        let ws = [w("web", "nginx", &[80]), w("db", "postgres", &[5432])];
        let p = pair(&ws, &mains(&["."]), None);
        assert!(p.paired.is_empty());
        assert_eq!(p.questions.len(), 2);
        assert_eq!(p.questions[0].choices, ["."]);
    }

    #[test]
    fn local_ports_are_made_unique() {
        let paired = vec![
            (w("orders", "o", &[8080]), "./cmd/orders".to_string()),
            (
                w("gateway", "g", &[8080, 8081]),
                "./cmd/gateway".to_string(),
            ),
        ];
        let s = services(&paired);
        assert_eq!(s[0].ports, [(8080, 8080)]);
        assert_eq!(s[1].ports, [(8081, 8080), (8082, 8081)]);
    }
}
