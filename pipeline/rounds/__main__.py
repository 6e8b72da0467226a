from pipeline.common.config import run_main
from pipeline.rounds.loop import main

if __name__ == "__main__":
    run_main(main)
