//! lvs-controller: serve the HTTP endpoints at once; run the controller only
//! while this replica holds the lease.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Client, Config,
    client::ClientBuilder,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::events::Reporter,
};
use lvs_controller::{
    FIELD_MANAGER,
    args::{Args, Command},
    controller,
    lease::{LeaderElector, LeaseConfig},
    metrics::Metrics,
    preview,
    server::{self, Health},
    telemetry,
    write_guard::WriteGuardLayer,
};
use lvs_crds::translate::TranslateOptions;
use tokio::{signal::unix::SignalKind, sync::watch};
use tracing::{error, info, warn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Translate { path, now }) = &args.command {
        return translate(&args, path, *now);
    }
    telemetry::init(args.log_format);
    let client = client(&args).await?;
    let identity = args.identity();
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());

    let server = server::serve(args.metrics_address, Arc::clone(&health), Arc::clone(&metrics));
    tokio::spawn(async move {
        if let Err(error) = server.await {
            error!(%error, "the HTTP server stopped");
            std::process::exit(1);
        }
    });

    let lease = LeaseConfig::new(args.lease_namespace.clone(), args.lease_name.clone(), identity.clone());
    let (deadline_tx, mut leading) = watch::channel(None);
    // The lease's own requests go out unguarded; the controller's writes end
    // by the renew deadline, or when leadership is lost.
    let controller_client = guarded_client(&args, WriteGuardLayer::new(leading.clone())).await?;
    tokio::spawn(LeaderElector::new(client.clone(), lease.clone()).run(deadline_tx));
    info!(%identity, lease = %format!("{}/{}", lease.namespace, lease.name), "waiting for the lease");

    let options = TranslateOptions {
        service_cidrs: args.service_cidrs.clone(),
        pod_cidrs: args.pod_cidrs.clone(),
        api_server_addresses: api_server_addresses(&args, &client).await,
        default_load_balancer_class: args.default_load_balancer_class,
        ..Default::default()
    };
    info!(api_servers = ?options.api_server_addresses, "addresses never given as VIPs");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            became = leading.wait_for(Option::is_some) => { became.context("the lease loop ended")?; }
        }
        info!("holding the lease: starting the controller");
        health.set_leading(true);
        metrics.set_leader(true);
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(identity.clone()) };
        let run = controller::run(
            controller_client.clone(),
            args.namespace.clone(),
            options.clone(),
            reporter,
            Arc::clone(&metrics),
            Arc::clone(&health),
        );
        // Leaving this select drops the controller; its writes in flight were
        // already abandoned by the guard at the deadline or the loss.
        let stop = tokio::select! {
            () = &mut shutdown => true,
            () = run => { warn!("the controller stopped"); false }
            lost = leading.wait_for(Option::is_none) => {
                lost.context("the lease loop ended")?;
                warn!("lost the lease: stopped writing");
                false
            }
        };
        health.set_leading(false);
        metrics.set_leader(false);
        if stop {
            break;
        }
    }

    info!("shutting down");
    if let Err(error) = LeaderElector::new(client, lease).release().await {
        warn!(%error, "could not release the lease; the other replica takes over when it expires");
    }
    Ok(())
}

/// `lvs-controller translate`: the preview on standard output, what was skipped
/// on standard error.
fn translate(args: &Args, path: &std::path::Path, now: Option<Timestamp>) -> anyhow::Result<()> {
    let objects = preview::load(path)?;
    for skipped in &objects.skipped {
        eprintln!("{skipped}");
    }
    let options = TranslateOptions {
        service_cidrs: args.service_cidrs.clone(),
        pod_cidrs: args.pod_cidrs.clone(),
        api_server_addresses: args.api_server_addresses.clone(),
        ..Default::default()
    };
    let now = Time(now.unwrap_or_else(Timestamp::now));
    print!("{}", preview::render(&preview::preview(&objects, &options, &now))?);
    Ok(())
}

/// The API server's addresses, never to be a VIP: `--api-server-addresses`,
/// the client config's host when it is an address, and the endpoints of the
/// `default/kubernetes` Service (best effort: a failure is logged).
async fn api_server_addresses(args: &Args, client: &Client) -> Vec<std::net::IpAddr> {
    let mut addresses = args.api_server_addresses.clone();
    if let Ok(config) = config(args).await
        && let Some(host) = config.cluster_url.host()
        && let Ok(address) = host.trim_matches(['[', ']']).parse()
    {
        addresses.push(address);
    }
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(client.clone(), "default");
    let params = kube::api::ListParams::default().labels("kubernetes.io/service-name=kubernetes");
    match slices.list(&params).await {
        Ok(list) => {
            let endpoints = list
                .items
                .into_iter()
                .flat_map(|s| s.endpoints.into_iter().flatten())
                .flat_map(|e| e.addresses);
            addresses.extend(endpoints.filter_map(|a| a.parse::<std::net::IpAddr>().ok()));
        }
        Err(error) => warn!(%error, "could not read the API server's endpoints"),
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

async fn client(args: &Args) -> anyhow::Result<Client> {
    Ok(Client::try_from(config(args).await?)?)
}

/// A client whose writes pass `guard`.
async fn guarded_client(args: &Args, guard: WriteGuardLayer) -> anyhow::Result<Client> {
    Ok(ClientBuilder::try_from(config(args).await?)?.with_layer(&guard).build())
}

async fn config(args: &Args) -> anyhow::Result<Config> {
    Ok(match &args.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    })
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
