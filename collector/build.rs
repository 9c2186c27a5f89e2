fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The kubelet's PodResources API (vendored proto): the client the collector uses, and the
    // server the tests' fake kubelet serves. A vendored protoc: nothing to install.
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/podresources/v1/api.proto"],
        &["proto"],
    )?;
    Ok(())
}
