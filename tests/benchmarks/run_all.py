"""`make bench`: every benchmark with its default settings (SFT/reward throughput, PPO vs trl==1.12.0, value heads)."""

from tests.benchmarks import bench_ppo, bench_train, bench_value_head


def main() -> None:
    bench_train.main([])
    bench_ppo.main([])
    bench_value_head.main([])


if __name__ == "__main__":
    main()
