"""`make bench`: every benchmark with its default settings (SFT/reward throughput, then PPO vs trl==1.12.0)."""

from tests.benchmarks import bench_ppo, bench_train


def main() -> None:
    bench_train.main([])
    bench_ppo.main([])


if __name__ == "__main__":
    main()
