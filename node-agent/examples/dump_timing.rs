use lvs_agent::ipvs::IpvsHandle;
use std::time::Instant;
fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let services = rt.block_on(async {
        let h = IpvsHandle::connect().await.unwrap();
        let t = Instant::now();
        let s = h.services().await.unwrap();
        eprintln!("services {} {:?}", s.len(), t.elapsed());
        let t = Instant::now();
        for x in s.iter().take(2000) {
            h.service(&x.service.key).await.unwrap();
        }
        eprintln!("2000 GET service doit {:?}", t.elapsed());
        s
    });
    for threads in [1usize, 2, 4] {
        let t = Instant::now();
        let chunks: Vec<Vec<_>> = services
            .chunks(services.len().div_ceil(threads))
            .map(|c| c.iter().map(|s| s.service.key).collect())
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|keys| {
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        let h = IpvsHandle::connect().await.unwrap();
                        let mut n = 0;
                        for k in &keys {
                            n += h.destinations(k).await.unwrap().len();
                        }
                        n
                    })
                })
            })
            .collect();
        let n: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        eprintln!("threads {threads}: dests {n} {:?}", t.elapsed());
    }
}
