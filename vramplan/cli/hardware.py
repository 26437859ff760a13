"""`vramplan catalog`: the hardware catalog's GPUs and systems."""

from __future__ import annotations

from typing import Annotated

import typer

from vramplan.cli import options as o
from vramplan.cli.render import check_format, emit_json_document

catalog_app = typer.Typer(help="The hardware catalog: GPUs and systems.", no_args_is_help=True)


@catalog_app.command("gpus")
def catalog_gpus(catalog: o.CatalogDir = None, fmt: o.Format = "table") -> None:
    """List the catalog's GPUs."""
    from vramplan.cli.render_hardware import emit_gpus
    from vramplan.hardware.catalog import load_hardware

    check_format(fmt)
    records = list(load_hardware(catalog).gpus.values())
    if fmt == "json":
        emit_json_list(records, "catalog-gpus")
    else:
        emit_gpus(records)


@catalog_app.command("systems")
def catalog_systems(catalog: o.CatalogDir = None, fmt: o.Format = "table") -> None:
    """List the catalog's systems (workstations, servers, cloud instances)."""
    from vramplan.cli.render_hardware import emit_systems
    from vramplan.hardware.catalog import load_hardware

    check_format(fmt)
    hardware = load_hardware(catalog)
    if fmt == "json":
        emit_json_list(list(hardware.systems.values()), "catalog-systems")
    else:
        emit_systems(list(hardware.systems.values()), hardware.gpus)


@catalog_app.command("show")
def catalog_show(record_id: Annotated[str, typer.Argument(help="A GPU or system id.")],
                 catalog: o.CatalogDir = None, fmt: o.Format = "table") -> None:
    """Show one GPU or system with every field and its sources."""
    from vramplan.cli.render_hardware import emit_record
    from vramplan.errors import UsageError
    from vramplan.hardware.catalog import load_hardware

    check_format(fmt)
    hardware = load_hardware(catalog)
    record = hardware.gpus.get(record_id) or hardware.systems.get(record_id)
    if record is None:
        raise UsageError(f"{record_id!r} is neither a GPU nor a system of the catalog (vramplan catalog gpus|systems)")
    if fmt == "json":
        emit_json_document({"record": record.model_dump(mode="json")}, "catalog-show")
    else:
        emit_record(record, hardware.origins[record_id])


def emit_json_list(records, kind: str) -> None:
    emit_json_document([record.model_dump(mode="json") for record in records], kind)
