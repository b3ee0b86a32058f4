use std::path::{Component, Path, PathBuf};

use vdisk_core::{Error, ErrorKind, Result};

/// Resolve `name`, a path written inside a descriptor, against the descriptor's folder `dir`.
///
/// Unless `allow_outside` is set, a name that is absolute or climbs out of `dir` with `..` is
/// refused ([`ErrorKind::PathRefused`]): a descriptor from an untrusted source must not make
/// vdisk read arbitrary files. `what` names the reference in the error ("extent file",
/// "parent").
pub fn resolve_relative(
    dir: &Path,
    name: &Path,
    allow_outside: bool,
    what: &str,
) -> Result<PathBuf> {
    if name.as_os_str().is_empty() {
        return Err(Error::invalid(format!("{what} has an empty file name")));
    }
    if allow_outside {
        return Ok(dir.join(name));
    }
    let refuse = |why: &str| {
        Err(Error::new(
            ErrorKind::PathRefused,
            format!("{what} \"{}\" {why}", name.display()),
        ))
    };
    let mut depth: usize = 0;
    for comp in name.components() {
        match comp {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return refuse("leaves the descriptor's folder");
                }
                depth -= 1;
            }
            Component::RootDir | Component::Prefix(_) => {
                return refuse("is an absolute path");
            }
        }
    }
    if depth == 0 {
        return refuse("names the descriptor's folder itself");
    }
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_resolve_inside_the_folder() {
        let d = Path::new("/images");
        assert_eq!(
            resolve_relative(d, Path::new("a-s001.vmdk"), false, "extent file").unwrap(),
            PathBuf::from("/images/a-s001.vmdk")
        );
        assert!(resolve_relative(d, Path::new("sub/../a.vmdk"), false, "x").is_ok());
    }

    #[test]
    fn escaping_names_are_refused() {
        let d = Path::new("/images");
        for bad in [
            "/etc/passwd",
            "../a.vmdk",
            "sub/../../a.vmdk",
            ".",
            "sub/..",
        ] {
            let e = resolve_relative(d, Path::new(bad), false, "extent file").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PathRefused, "{bad}");
            assert!(
                !e.to_string().contains("--"),
                "library errors name no flags: {bad}"
            );
        }
        assert_eq!(
            resolve_relative(d, Path::new("../a.vmdk"), true, "x").unwrap(),
            PathBuf::from("/images/../a.vmdk")
        );
    }
}
