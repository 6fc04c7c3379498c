"""Image-index query latency and recall@k of the IVF index against exact search (runtime/retrieval.py).

Synthetic CLIP-like embeddings: a Gaussian mixture on the unit sphere (d = 768, as CLIP ViT-L/14's), queries
drawn from the same mixture. Prints, per size, build time, per-query latency of exact (IndexFlatIP) and IVF
search at batch 1, the throughput ratio and IVF's recall@k against the exact neighbours.

    python -m benchmarks.retrieval [--sizes 10000,1000000] [--dim 768] [--k 4] [--nprobe 16]
"""

import argparse
import time

import numpy as np

from runtime.retrieval import ImageIndex, faiss_module, ivf_lists


def mixture(n: int, dim: int, clusters: int, rng, spread: float = 0.6) -> np.ndarray:
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    x = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def per_query_seconds(index, queries: np.ndarray, k: int) -> float:
    start = time.perf_counter()
    for q in queries:
        index.search(q[None], k)
    return (time.perf_counter() - start) / len(queries)


def run(n: int, dim: int, k: int, nprobe: int, n_queries: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    base = mixture(n, dim, max(16, n // 1000), rng)
    queries = base[rng.choice(n, n_queries, replace=False)] + 0.05 * rng.standard_normal(
        (n_queries, dim), dtype=np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    captions, ids = [""] * n, [[]] * n
    start = time.perf_counter()
    ivf = ImageIndex.build(base, captions, ids, "bench", "none", 1, index_type="ivf", nprobe=nprobe)
    build_s = time.perf_counter() - start
    exact = faiss_module().IndexFlatIP(dim)
    exact.add(base)
    _, truth = exact.search(queries, k)
    _, found = ivf.index.search(queries, k)
    recall = np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)])
    exact_s, ivf_s = per_query_seconds(exact, queries, k), per_query_seconds(ivf.index, queries, k)
    return dict(n=n, lists=ivf_lists(n), nprobe=ivf.index.nprobe, build_s=build_s, exact_ms=exact_s * 1e3,
                ivf_ms=ivf_s * 1e3, speedup=exact_s / ivf_s, recall=recall)  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000", help="Comma-separated database sizes.")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    columns = f"{'size':>9} {'lists':>6} {'nprobe':>6} {'build s':>8} {'exact ms':>9} {'ivf ms':>7} {'speedup':>8}"
    print(f"{columns} recall@{args.k}")
    for n in (int(s) for s in args.sizes.split(",")):
        r = run(n, args.dim, args.k, args.nprobe, args.queries)
        print(f"{r['n']:>9,} {r['lists']:>6} {r['nprobe']:>6} {r['build_s']:>8.1f} {r['exact_ms']:>9.3f} "
              f"{r['ivf_ms']:>7.3f} {r['speedup']:>7.1f}x {r['recall']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
