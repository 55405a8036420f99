//! Test support shared by unit tests, integration tests and benchmarks: build real git
//! repositories from plain files with fixed dates, so fixtures never hold nested `.git` dirs
//! and every build of a fixture yields the same commit ids.

// CONTRACT (implemented by the source helper):
// pub struct RepoBuilder { .. }
// impl RepoBuilder {
//   pub fn init(path: &Path) -> Result<RepoBuilder>;         // non-bare repo, branch main
//   pub fn commit_dir(&mut self, dir: &Path, message: &str) -> Result<String /* sha */>;
//       replaces the whole tree with the contents of dir (recursively, symlinks kept),
//       commits on main with a fixed author/committer and a fixed date that increments by one
//       minute per commit (deterministic ids)
//   pub fn commit_files(&mut self, files: &[(&str, &[u8])], message: &str) -> Result<String>;
//   pub fn tag(&mut self, name: &str) -> Result<()>;           // lightweight tag at HEAD
// }
