"""``iotcrm rules``: placeholder until the rule DSL lands."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("rules", help="validate, test and replay rule files")
