//! A proxy started the way the binary starts one (`launch::launch` from
//! `Settings`), in-process: it serves its file's configuration, says
//! where it listens, drains on shutdown; bad settings are named errors.

use isthmus_gateway::launch::{LaunchError, NodeFlags, Settings, launch};

#[tokio::test]
async fn launch_serves_the_file_configuration_and_shuts_down() {
    let app = isthmus_sample::SampleApp::new("catalog", "local", "v1");
    let running_app = isthmus_sample::serve(app.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = isthmus_testkit::temp_dir("launch");
    let path = dir.join("sidecar.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners:\n  - {{name: out, address: \"127.0.0.1:0\", http: {{}}}}\n\
             services:\n  - name: catalog\n    ports: [{{port: 80, protocol: HTTP}}]\n    \
             endpoints: [{{address: \"{}\"}}]\n",
            running_app.addr
        ),
    )
    .unwrap();
    let settings = Settings {
        admin: "127.0.0.1:0".parse().unwrap(),
        access_log: "off".into(),
        ..Settings::from_file(&path)
    };
    let running = launch(settings).await.expect("the proxy starts");
    let out = running
        .sidecar
        .listeners
        .bound()
        .into_iter()
        .find_map(|(name, addr)| (name == "out").then_some(addr))
        .expect("the out listener is bound");
    let (status, body) = isthmus_testkit::http(out, "catalog", "/hello")
        .await
        .expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"service\":\"catalog\""), "{body}");
    let admin = running.sidecar.admin_addr();
    let (status, _) = isthmus_testkit::http(admin, "admin", "/readyz")
        .await
        .unwrap();
    assert_eq!(status, 200);
    running.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(out).await.is_err(),
        "the listener is closed after shutdown"
    );
    running_app.stop().await;
}

#[tokio::test]
async fn bad_settings_are_named() {
    let none = Settings {
        config: None,
        ..Settings::from_file("unused")
    };
    assert!(matches!(launch(none).await, Err(LaunchError::NoConfig)));

    let missing = Settings::from_file("/nonexistent/isthmus.yaml");
    let e = launch(missing).await.err().expect("refused").to_string();
    assert!(e.contains("/nonexistent/isthmus.yaml"), "{e}");

    let anonymous = Settings {
        control_plane: Some("127.0.0.1:1".into()),
        config: None,
        ..Settings::from_file("unused")
    };
    let e = launch(anonymous).await.err().expect("refused").to_string();
    assert!(e.contains("--name and --namespace"), "{e}");

    let flags = NodeFlags {
        name: Some("catalog-0".into()),
        namespace: Some("shop".into()),
        workload_ports: vec!["http=8080".into()],
        ..Default::default()
    };
    let e = flags.resolve(Default::default()).unwrap_err().to_string();
    assert!(e.contains("--workload-address"), "{e}");
}
