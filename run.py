from chatserver.cli import main

if __name__ == "__main__":  # `serve --workers N` spawns workers that import this file again
    raise SystemExit(main())
