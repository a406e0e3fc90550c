"""`python -m service_runtime.db upgrade [REVISION] | downgrade REVISION | current` against COMFYMESH_DATABASE_URL."""

from __future__ import annotations

import argparse

from service_runtime.db import migrate
from service_runtime.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service_runtime.db", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="apply migrations up to REVISION (default head)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="revert migrations down to REVISION")
    down.add_argument("revision")
    sub.add_parser("current", help="print the applied revision")
    args = parser.parse_args()
    url = get_settings().resolved_database_url
    if args.command == "upgrade":
        migrate.upgrade(url, args.revision)
    elif args.command == "downgrade":
        migrate.downgrade(url, args.revision)
    else:
        print(migrate.current_revision(url) or "(empty)")


if __name__ == "__main__":
    main()
