"""``iotcrm models``: placeholder until the model layer lands."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("models", help="backtest and inspect online models")
