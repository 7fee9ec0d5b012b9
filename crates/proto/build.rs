//! Generates the gRPC code with a vendored protoc, so building sock needs no
//! system protoc.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Read at run time, not with env!(): a build script binary shared between
    // checkouts (one target dir) must compile the protos of the one building.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = ["common", "gateway", "registry", "cache", "sandboxd"]
        .iter()
        .map(|f| root.join(format!("sock/v1/{f}.proto")))
        .collect();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sock_descriptor.bin"))
        .compile_with_config(config, &files, std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
