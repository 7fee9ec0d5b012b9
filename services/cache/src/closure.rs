//! The dependency closure of a set of requirements: every package they
//! need, each installed in the store, following `Requires-Dist` with
//! markers evaluated for the sandboxes' Python.
//!
//! Breadth first, the function's own lines first (the first version chosen
//! for a name wins). Each installed package's `Requires-Dist` are followed
//! with markers evaluated (`extra` only when asked for). Pinned lines use
//! the store; unpinned function lines take what pip picks; unpinned
//! dependencies take the newest store version their specifier allows, else
//! pip's pick.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::error::PackageError;
use crate::markers::Environment;
use crate::packages::{Package, Packages};
use crate::requirement::Requirement;

/// Resolves `roots` breadth first, in `sys.path` order: the roots in
/// their order, then their dependencies. Packages in `given` (a zygote
/// parent's) count as chosen and are not returned again.
///
/// - A root that does not pin a version is installed as pip picks it (once
///   per caller: callers remember the result).
/// - A dependency is satisfied by a store version its specifier allows
///   (the newest), else by what pip picks.
/// - The first version chosen for a name wins, as with pip's `--no-deps`
///   installs; a later specifier it does not meet is logged.
pub(crate) async fn resolve(
    packages: &Arc<Packages>,
    env: &Environment,
    roots: &[Requirement],
    given: &[Arc<Package>],
) -> Result<Vec<Arc<Package>>, PackageError> {
    let mut chosen: HashMap<String, Arc<Package>> =
        given.iter().map(|p| (p.name.clone(), p.clone())).collect();
    let mut order = Vec::new();
    let mut queue: VecDeque<(Requirement, bool)> = roots
        .iter()
        .filter(|r| r.marker.as_ref().is_none_or(|m| m.evaluate(env, &[])))
        .map(|r| (r.clone(), false))
        .collect();
    let mut seen_extras: HashSet<(String, String)> = HashSet::new();
    while let Some((requirement, reuse)) = queue.pop_front() {
        if let Some(have) = chosen.get(&requirement.name) {
            if !requirement.allows(&have.version) {
                tracing::warn!(package = %have.pin(), wanted = %requirement.pip_spec(), "dependency conflict: keeping the version chosen first");
            }
            // Extras asked for later still bring their dependencies.
            let new_extras: Vec<String> = requirement
                .extras
                .iter()
                .filter(|e| seen_extras.insert((requirement.name.clone(), (*e).clone())))
                .cloned()
                .collect();
            if !new_extras.is_empty() {
                let have = have.clone();
                enqueue_extras_only(&mut queue, &have, env, &new_extras);
            }
            continue;
        }
        let package = packages.ensure(&requirement, reuse).await?;
        for extra in &requirement.extras {
            seen_extras.insert((requirement.name.clone(), extra.clone()));
        }
        for dependency in &package.requires {
            let holds = dependency
                .marker
                .as_ref()
                .is_none_or(|m| m.evaluate(env, &requirement.extras));
            if holds {
                queue.push_back((dependency.clone(), true));
            }
        }
        chosen.insert(requirement.name.clone(), package.clone());
        order.push(package);
    }
    Ok(order)
}

/// The dependencies `extras` add to an already chosen package.
fn enqueue_extras_only(
    queue: &mut VecDeque<(Requirement, bool)>,
    package: &Package,
    env: &Environment,
    extras: &[String],
) {
    for dependency in &package.requires {
        let only_with_extras = dependency
            .marker
            .as_ref()
            .is_some_and(|m| m.evaluate(env, extras) && !m.evaluate(env, &[]));
        if only_with_extras {
            queue.push_back((dependency.clone(), true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::tests::{FakeInstaller, open_store};

    fn reqs(lines: &[&str]) -> Vec<Requirement> {
        lines
            .iter()
            .map(|l| Requirement::parse(l).expect("valid"))
            .collect()
    }

    fn pins(packages: &[Arc<Package>]) -> Vec<String> {
        packages.iter().map(|p| p.pin()).collect()
    }

    #[tokio::test]
    async fn the_closure_follows_requires_dist_with_markers() {
        let installer = Arc::new(FakeInstaller::new(&[
            (
                "app-lib",
                "1.0",
                &[
                    "helper>=1.0",
                    "oldpy; python_version < \"3.8\"",
                    "winonly; sys_platform == \"win32\"",
                    "fast; extra == \"speed\"",
                ],
            ),
            ("helper", "1.0", &["base"]),
            ("helper", "1.5", &["base"]),
            ("base", "3.0", &[]),
            ("fast", "1.0", &[]),
            ("oldpy", "1.0", &[]),
            ("winonly", "1.0", &[]),
        ]));
        let (_dir, store) = open_store(installer);
        let env = Environment::cpython311_linux();
        let closure = resolve(&store, &env, &reqs(&["app-lib==1.0"]), &[])
            .await
            .expect("resolves");
        assert_eq!(pins(&closure), ["app-lib==1.0", "helper==1.5", "base==3.0"]);

        // With the extra, its dependency joins.
        let with_extra = resolve(&store, &env, &reqs(&["app-lib[speed]==1.0"]), &[])
            .await
            .expect("resolves");
        assert_eq!(
            pins(&with_extra),
            ["app-lib==1.0", "helper==1.5", "fast==1.0", "base==3.0"]
        );
    }

    #[tokio::test]
    async fn a_function_pin_wins_over_what_a_dependency_would_pick() {
        let installer = Arc::new(FakeInstaller::new(&[
            ("app-lib", "1.0", &["helper>=1.0"]),
            ("helper", "1.0", &[]),
            ("helper", "1.5", &[]),
        ]));
        let (_dir, store) = open_store(installer);
        let env = Environment::cpython311_linux();
        let closure = resolve(&store, &env, &reqs(&["app-lib==1.0", "helper==1.0"]), &[])
            .await
            .expect("resolves");
        assert_eq!(pins(&closure), ["app-lib==1.0", "helper==1.0"]);
        let runs = store.pip_runs();

        // A dependency satisfied by the store is not installed again.
        let again = resolve(&store, &env, &reqs(&["app-lib==1.0"]), &[])
            .await
            .expect("resolves");
        assert_eq!(pins(&again), ["app-lib==1.0", "helper==1.0"]);
        assert_eq!(store.pip_runs(), runs);

        // Given packages (a zygote parent's) are used, not returned.
        let given = resolve(&store, &env, &reqs(&["helper==1.0"]), &[])
            .await
            .expect("resolves");
        let on_top = resolve(&store, &env, &reqs(&["app-lib==1.0"]), &given)
            .await
            .expect("resolves");
        assert_eq!(pins(&on_top), ["app-lib==1.0"]);
    }

    #[tokio::test]
    async fn a_failing_dependency_fails_the_closure_naming_it() {
        let installer = Arc::new(FakeInstaller::new(&[("app-lib", "1.0", &["missing>=1"])]));
        let (_dir, store) = open_store(installer);
        let err = resolve(
            &store,
            &Environment::cpython311_linux(),
            &reqs(&["app-lib==1.0"]),
            &[],
        )
        .await
        .expect_err("fails");
        assert!(
            err.to_string()
                .contains("package 'missing>=1' failed to install"),
            "{err}"
        );
    }
}
