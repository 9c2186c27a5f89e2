fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: nothing to install on the build machine.
    // query.proto and storage.proto import it: a change there changes the code made here.
    // A build script that prints rerun-if-changed is rerun for those files only: name ours.
    println!("cargo:rerun-if-changed=../telemetry-wire/proto/telemetry.proto");
    println!("cargo:rerun-if-changed=proto/query.proto");
    println!("cargo:rerun-if-changed=proto/storage.proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .extern_path(".telemetry.v1", "::telemetry_wire::wire::proto")
        .compile_with_config(
            config,
            &["proto/query.proto", "proto/storage.proto"],
            &["proto", "../telemetry-wire/proto"],
        )?;
    Ok(())
}
