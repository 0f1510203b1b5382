"""The `elusive` command line: a thin layer over the Python API, one subcommand per stage.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`elusive --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Learn facts from small corpora by contrasting attention of a large and a small LM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bios_app = typer.Typer(help="The synthetic biography corpus (bioS).", no_args_is_help=True)
app.add_typer(bios_app, name="bios")


def fail(message: str) -> None:
    """Print a one-line error to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@bios_app.command("generate")
def bios_generate(
    out: Annotated[Path, typer.Option(help="Folder to write people.jsonl and qa.jsonl into.")],
    n: Annotated[int, typer.Option(help="Number of people (distinct names).")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    templates: Annotated[
        int, typer.Option(help="Paraphrase templates per field (1 = the paper's wording only).")
    ] = 1,
    field_order: Annotated[
        str,
        typer.Option(help="Sentence order, a comma-separated permutation of the five fields."),
    ] = "date,city,university,major,company",
    shuffle_sentences: Annotated[
        bool, typer.Option(help="Shuffle sentence order per person; the first names the person.")
    ] = False,
) -> None:
    """Write a synthetic biography corpus (people.jsonl) and its QA pairs (qa.jsonl)."""
    from .corpus import BiosConfig, CorpusError, write_bios

    config = BiosConfig(
        n=n,
        seed=seed,
        templates=templates,
        field_order=tuple(f.strip() for f in field_order.split(",")),
        shuffle_sentences=shuffle_sentences,
    )
    try:
        people, qa = write_bios(config, out)
    except CorpusError as exc:
        fail(str(exc))
    typer.echo(f"wrote {n} people to {people} and {5 * n} questions to {qa}")


# --- attention commands (issue 3)

# --- augment commands (issue 4)

# --- train / evaluate commands (issue 5)


if __name__ == "__main__":
    app()
