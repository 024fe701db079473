"""Derive a JSON Schema for KServe's ``InferenceService`` (serving.kserve.io/v1beta1).

KServe's CRD YAML is not shipped in any Python package, but its Python SDK (the ``kserve`` wheel) ships
OpenAPI-generated model classes whose ``openapi_types`` / ``attribute_map`` describe every field of the
resource, and whose setters refuse ``None`` for required fields. This script reads those classes *as
source* (with ``ast``, without importing the SDK or its dependencies) and writes a JSON Schema (draft
2020-12) in which

* every KServe type becomes a closed object (unknown fields are errors, like ``kubectl --validate=strict``),
* required fields are the ones the SDK refuses to leave empty,
* Kubernetes types (``V1Container``, ``V1ObjectMeta``, ...) are ``$ref``s into the Kubernetes schemas that
  the ``kubernetes-validate`` package bundles, so containers, probes and resources are checked against the
  real Kubernetes definitions at test time.

This is a schema *derived* from the SDK, not KServe's own CRD schema (which additionally carries enums and
defaults). Regenerate after upgrading KServe:

    pip install --no-deps kserve==VERSION
    python tests/deploy/gen_kserve_schema.py
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import sys
from pathlib import Path

import kubernetes_validate.utils as kv

K8S_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
OUT = Path(__file__).parent / "schemas" / "kserve-v1beta1-inferenceservice.schema.json"
KSERVE_PREFIXES = ("V1beta1", "V1alpha1", "V1alpha2")
# Types the SDK names outside the V<version><Name> pattern.
SPECIAL = {
    "ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "V1beta1MetricQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "V1ObjectMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "V1ListMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
    "V1Time": "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
}
PRIMITIVES = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
}


def k8s_name_index(defs: dict) -> dict[str, str]:
    """Map SDK class names (V1Container, K8sIoApiAppsV1DeploymentStrategy, ...) to Kubernetes def keys."""
    index: dict[str, str] = {}
    # Lower rank wins when two groups define the same short name (core beats everything else).
    ranked = sorted(defs, key=lambda k: (0 if k.startswith("io.k8s.api.core.") else 1, k))
    for key in ranked:
        m = re.match(r"^(.*)\.(v\d+(?:alpha\d+|beta\d+)?)\.([A-Za-z0-9]+)$", key)
        if not m:
            continue
        prefix, version, name = m.groups()
        index.setdefault(version.capitalize() + name, key)
        if prefix.startswith("io.k8s."):  # io.k8s.api.apps -> K8sIoApiApps (Go import path k8s.io/api/apps)
            parts = ["k8s", "io", *prefix.split(".")[2:], version]
            index.setdefault("".join(p.capitalize() for p in parts) + name, key)
    index.update(SPECIAL)
    return index


def read_models(models_dir: Path) -> dict[str, tuple[dict[str, str], dict[str, str], set[str]]]:
    """class name -> (openapi_types, attribute_map, required attributes), read from the SDK sources."""
    models = {}
    for path in sorted(models_dir.glob("*.py")):
        tree = ast.parse(path.read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            types = amap = None
            for stmt in cls.body:
                if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                    if stmt.targets[0].id == "openapi_types":
                        types = ast.literal_eval(stmt.value)
                    elif stmt.targets[0].id == "attribute_map":
                        amap = ast.literal_eval(stmt.value)
            if types is None or amap is None:
                continue
            required = set(re.findall(r"Invalid value for `(\w+)`, must not be `None`", ast.unparse(cls)))
            models[cls.name] = (types, amap, required)
    return models


def build(models, index) -> tuple[dict, set[str]]:
    defs: dict[str, dict] = {}
    unresolved: set[str] = set()

    def schema_for(t: str) -> dict:
        t = t.strip()
        if t in PRIMITIVES:
            return dict(PRIMITIVES[t])
        if m := re.fullmatch(r"list\[(.+)\]", t):
            return {"type": "array", "items": schema_for(m.group(1))}
        if m := re.fullmatch(r"dict\(str, (.+)\)", t):
            return {"type": "object", "additionalProperties": schema_for(m.group(1))}
        if t.startswith(KSERVE_PREFIXES) and t in models:
            define(t)
            return {"$ref": f"#/$defs/{t}"}
        if t in index:
            return {"$ref": f"{K8S_DEFS_ID}#/$defs/{index[t]}"}
        unresolved.add(t)
        return {}

    def define(name: str) -> None:
        if name in defs:
            return
        defs[name] = {}  # placeholder against recursion
        types, amap, required = models[name]
        props = {amap[attr]: schema_for(typ) for attr, typ in types.items()}
        node = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            node["required"] = sorted(amap[r] for r in required)
        defs[name] = node

    define("V1beta1InferenceServiceSpec")
    schema: dict = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:resnet-serve:kserve-v1beta1-inferenceservice",
        "title": "InferenceService (serving.kserve.io/v1beta1), derived from the KServe Python SDK",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": {"const": "InferenceService"},
            "metadata": {"$ref": f"{K8S_DEFS_ID}#/$defs/{index['V1ObjectMeta']}"},
            "spec": {"$ref": "#/$defs/V1beta1InferenceServiceSpec"},
            "status": {"type": "object"},
        },
        "$defs": defs,
    }
    return schema, unresolved


def main() -> int:
    spec = importlib.util.find_spec("kserve")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        print("kserve is not installed: pip install --no-deps kserve", file=sys.stderr)
        return 1
    models_dir = Path(next(iter(spec.submodule_search_locations))) / "models"
    defs_file = f"kubernetes-json-schema/v{kv.latest_version()}-local-strict/_definitions.json"
    defs = kv.schema_contents(defs_file, kv.latest_version())
    schema, unresolved = build(read_models(models_dir), k8s_name_index(defs["$defs"]))
    schema["x-derived-from"] = {
        "kserve": importlib.metadata.version("kserve"),
        "kubernetes-validate": importlib.metadata.version("kubernetes-validate"),
        "kubernetes-schemas": kv.latest_version(),
        "unresolved-types-accept-anything": sorted(unresolved),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({len(schema['$defs'])} KServe types; unresolved: {sorted(unresolved) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
