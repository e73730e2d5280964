"""Operator commands: placeholder."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    del subparsers
