fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: nothing to install on the build machine.
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_with_config(config, &["proto/telemetry.proto"], &["proto"])?;
    Ok(())
}
