"""``iotcrm simulate`` and ``iotcrm bench``: placeholder until the load test lands."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    del subparsers
