"""Validates every example in an OpenAPI 3.1 document against the schema it illustrates.

Examples are what readers of /docs copy and what generators put in doc comments; one that
does not match its schema is a bug in the contract. Usage: check_examples.py DOCUMENT.
Exits 1 listing each wrong example, 0 with a count otherwise.
"""

import json
import sys

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE = "urn:mailgate:openapi"


def pointer(parts):
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def examples(node, path):
    """Yields (schema path, example path, example) for each example under `node`."""
    if isinstance(node, dict):
        in_properties = bool(path) and path[-1] == "properties"
        if not in_properties:
            target = path + ["schema"] if "schema" in node else path
            if "example" in node:
                yield target, path + ["example"], node["example"]
            named = node.get("examples")
            if isinstance(named, dict):
                for name, value in named.items():
                    if isinstance(value, dict) and "value" in value:
                        yield target, path + ["examples", name, "value"], value["value"]
            elif isinstance(named, list) and "schema" not in node:
                for i, value in enumerate(named):
                    yield target, path + ["examples", i], value
        for key, child in node.items():
            if key in ("example", "examples") and not in_properties:
                continue
            yield from examples(child, path + [key])
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from examples(child, path + [i])


def main(location):
    with open(location, encoding="utf-8") as f:
        document = json.load(f)
    registry = Registry().with_resource(BASE, Resource(contents=document, specification=DRAFT202012))
    checked, wrong = 0, []
    for schema_path, example_path, example in examples(document, []):
        validator = Draft202012Validator(
            {"$ref": BASE + "#" + pointer(schema_path)}, registry=registry, format_checker=FormatChecker()
        )
        checked += 1
        for error in validator.iter_errors(example):
            wrong.append(f"{pointer(example_path)}: {error.message} (at {pointer(error.absolute_path) or '/'})")
    for line in wrong:
        print(f"wrong example {line}", file=sys.stderr)
    if wrong:
        sys.exit(1)
    print(f"check_examples: {checked} examples match their schemas")


if __name__ == "__main__":
    main(sys.argv[1])
