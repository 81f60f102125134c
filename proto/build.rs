//! Compiles the proto contract with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/hub.proto"];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // These messages carry secrets; their Debug impls are written by hand in lib.rs.
        .skip_debug(["llmhub.v1.ProviderKey", "llmhub.v1.Snapshot"])
        .compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
