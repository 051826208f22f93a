#!/usr/bin/env python3
"""Lists a crate's public API from rustdoc's JSON output, one item a line.

Reads the JSON that `rustdoc --output-format json` writes (nightly, or
stable with RUSTC_BOOTSTRAP=1) and walks the crate from its root module as
a user sees it: public modules, re-exports (followed to what they name),
items, public struct fields, enum variants, inherent methods and
associated items, and the traits each public type implements (explicit,
non-blanket impls). Functions are printed with their parameter and return
types, rendered from the JSON, so that a change of signature shows in the
diff. Items marked #[doc(hidden)] are left out, as rustdoc leaves them out.

Usage: public-api.py CRATE.json > api/CRATE.txt
"""
import json
import sys


def main():
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    lister = Lister(doc)
    root = doc["index"][str(doc["root"])]
    lister.module(root, root["name"])
    for line in sorted(set(lister.lines)):
        print(line)


class Lister:
    def __init__(self, doc):
        self.doc = doc
        self.index = doc["index"]
        self.lines = []
        self.seen = set()

    def item(self, id_):
        return self.index.get(str(id_))

    def hidden(self, item):
        attrs = item.get("attrs") or []
        return any("doc(hidden)" in (a if isinstance(a, str) else json.dumps(a)).replace(" ", "")
                   or (isinstance(a, dict) and a.get("other", "").replace(" ", "").find("doc(hidden)") >= 0)
                   for a in attrs)

    def marks(self, item):
        """`#[non_exhaustive] ` when the item has it (part of its contract)."""
        attrs = json.dumps(item.get("attrs") or [])
        return "#[non_exhaustive] " if "non_exhaustive" in attrs else ""

    def module(self, module, path):
        if (module["id"], path) in self.seen:
            return
        self.seen.add((module["id"], path))
        for child_id in module["inner"]["module"]["items"]:
            child = self.item(child_id)
            if child is None or self.hidden(child):
                continue
            self.entry(child, path)

    def entry(self, item, path, name=None):
        kind, inner = next(iter(item["inner"].items()))
        name = name or item["name"]
        if kind == "use":
            self.reexport(inner["use"] if "use" in inner else inner, path)
            return
        if item.get("visibility") not in ("public", "default", None):
            return
        full = f"{path}::{name}"
        if kind == "module":
            self.lines.append(f"pub mod {full}")
            self.module(item, full)
        elif kind == "function":
            self.lines.append(f"pub fn {full}{self.signature(inner)}")
        elif kind == "struct":
            self.lines.append(f"{self.marks(item)}pub struct {full}{self.generics(inner.get('generics'))}")
            self.fields(inner["kind"], full)
            self.impls(inner.get("impls", []), full)
        elif kind == "enum":
            self.lines.append(f"{self.marks(item)}pub enum {full}{self.generics(inner.get('generics'))}")
            for v in inner.get("variants", []):
                var = self.item(v)
                if var and not self.hidden(var):
                    self.lines.append(f"pub {full}::{var['name']}{self.variant(var['inner']['variant'])}")
            self.impls(inner.get("impls", []), full)
        elif kind == "trait":
            self.lines.append(f"pub trait {full}")
            for m in inner.get("items", []):
                member = self.item(m)
                if member:
                    self.member(member, full)
        elif kind == "type_alias":
            self.lines.append(f"pub type {full} = {self.ty(inner['type'])}")
        elif kind == "constant":
            self.lines.append(f"pub const {full}: {self.ty(inner['type'])}")
        elif kind == "static":
            self.lines.append(f"pub static {full}: {self.ty(inner['type'])}")
        elif kind == "macro":
            self.lines.append(f"pub macro {full}!")
        else:
            self.lines.append(f"pub {kind} {full}")

    def reexport(self, use, path):
        target = self.item(use["id"]) if use.get("id") is not None else None
        if use.get("is_glob"):
            if target and "module" in target["inner"]:
                self.module(target, path)
            else:
                self.lines.append(f"pub use {path}::{use['source']}::*")
            return
        if target is None or self.hidden(target):
            if target is None:
                self.lines.append(f"pub use {path}::{use['name']} = {use['source']}")
            return
        self.entry(target, path, use["name"])

    def fields(self, kind, full):
        if kind == "unit":
            return
        if "tuple" in kind:
            for i, f in enumerate(kind["tuple"]):
                field = self.item(f) if f is not None else None
                if field:
                    self.lines.append(f"pub {full}.{i}: {self.ty(field['inner']['struct_field'])}")
            return
        plain = kind.get("plain", {})
        for f in plain.get("fields", []):
            field = self.item(f)
            if field and not self.hidden(field):
                self.lines.append(f"pub {full}.{field['name']}: {self.ty(field['inner']['struct_field'])}")

    def variant(self, v):
        kind = v.get("kind")
        if kind == "plain" or kind is None:
            return ""
        if "tuple" in kind:
            return "(" + ", ".join(self.ty(self.item(f)["inner"]["struct_field"]) if f is not None and self.item(f) else "_" for f in kind["tuple"]) + ")"
        if "struct" in kind:
            names = []
            for f in kind["struct"]["fields"]:
                field = self.item(f)
                if field:
                    names.append(f"{field['name']}: {self.ty(field['inner']['struct_field'])}")
            return " { " + ", ".join(names) + " }"
        return ""

    def impls(self, impl_ids, full):
        for i in impl_ids:
            imp = self.item(i)
            if imp is None:
                continue
            inner = imp["inner"]["impl"]
            if inner.get("is_synthetic") or inner.get("blanket_impl") is not None:
                continue
            trait = inner.get("trait")
            if trait is not None:
                if self.path(trait) != "StructuralPartialEq":  # derive(PartialEq)'s marker
                    self.lines.append(f"impl {self.path(trait)} for {full}")
                continue
            for m in inner.get("items", []):
                member = self.item(m)
                if member and not self.hidden(member) and member.get("visibility") == "public":
                    self.member(member, full)

    def member(self, member, full):
        kind, inner = next(iter(member["inner"].items()))
        name = f"{full}::{member['name']}"
        if kind == "function":
            self.lines.append(f"pub fn {name}{self.signature(inner)}")
        elif kind == "assoc_const":
            self.lines.append(f"pub const {name}: {self.ty(inner['type'])}")
        elif kind == "assoc_type":
            self.lines.append(f"pub type {name}")
        elif kind == "constant":
            self.lines.append(f"pub const {name}: {self.ty(inner['type'])}")

    def generics(self, g):
        if not g:
            return ""
        params = []
        for p in g.get("params", []):
            kind = p.get("kind", {})
            if "lifetime" in kind:
                params.append(p["name"])
            elif "type" in kind:
                if kind["type"].get("is_synthetic"):
                    continue
                params.append(p["name"])
            elif "const" in kind:
                params.append(f"const {p['name']}")
        return f"<{', '.join(params)}>" if params else ""

    def signature(self, f):
        sig = f["sig"]
        args = ", ".join(f"{name}: {self.ty(t)}" for name, t in sig["inputs"])
        out = sig.get("output")
        ret = f" -> {self.ty(out)}" if out is not None else ""
        header = f.get("header", {})
        prefix = ("unsafe " if header.get("is_unsafe") else "")
        return f"{self.generics(f.get('generics'))}({prefix}{args}){ret}"

    def path(self, p):
        # The last segment only: a type reads the same wherever it is named
        # from (`crate::stats::DumpStats`, `DumpStats`), so only real
        # changes show.
        name = (p.get("path") or p.get("name") or "?").split("::")[-1]
        args = p.get("args")
        return name + self.args(args)

    def args(self, args):
        if not args:
            return ""
        if "angle_bracketed" in args:
            parts = []
            for a in args["angle_bracketed"].get("args", []):
                if "type" in a:
                    parts.append(self.ty(a["type"]))
                elif "lifetime" in a:
                    parts.append(a["lifetime"])
                elif "const" in a:
                    parts.append(str(a["const"].get("expr", "_")))
            for c in args["angle_bracketed"].get("constraints", []):
                binding = c.get("binding", {})
                if "equality" in binding and "type" in binding["equality"]:
                    parts.append(f"{c['name']} = {self.ty(binding['equality']['type'])}")
            return f"<{', '.join(parts)}>" if parts else ""
        if "parenthesized" in args:
            p = args["parenthesized"]
            out = p.get("output")
            return "(" + ", ".join(self.ty(t) for t in p.get("inputs", [])) + ")" + (f" -> {self.ty(out)}" if out else "")
        return ""

    def bounds(self, bounds):
        out = []
        for b in bounds:
            if "trait_bound" in b:
                out.append(self.path(b["trait_bound"]["trait"]))
            elif "outlives" in b:
                out.append(b["outlives"])
            elif "use" in b:
                continue
        return " + ".join(out)

    def ty(self, t):
        if t is None:
            return "()"
        kind, v = next(iter(t.items()))
        if kind == "resolved_path":
            return self.path(v)
        if kind == "primitive":
            return v
        if kind == "generic":
            return v
        if kind == "borrowed_ref":
            lt = f"{v['lifetime']} " if v.get("lifetime") else ""
            mut = "mut " if v.get("is_mutable") else ""
            return f"&{lt}{mut}{self.ty(v['type'])}"
        if kind == "raw_pointer":
            return f"*{'mut' if v.get('is_mutable') else 'const'} {self.ty(v['type'])}"
        if kind == "slice":
            return f"[{self.ty(v)}]"
        if kind == "array":
            return f"[{self.ty(v['type'])}; {v['len']}]"
        if kind == "tuple":
            return "(" + ", ".join(self.ty(x) for x in v) + ")"
        if kind == "impl_trait":
            return "impl " + self.bounds(v)
        if kind == "dyn_trait":
            traits = " + ".join(self.path(tr["trait"]) for tr in v.get("traits", []))
            lt = f" + {v['lifetime']}" if v.get("lifetime") else ""
            return f"dyn {traits}{lt}"
        if kind == "qualified_path":
            return f"<{self.ty(v['self_type'])}>::{v['name']}"
        if kind == "function_pointer":
            sig = v["sig"]
            args = ", ".join(self.ty(x) for _, x in sig["inputs"])
            out = sig.get("output")
            return f"fn({args})" + (f" -> {self.ty(out)}" if out else "")
        if kind == "infer":
            return "_"
        return kind


if __name__ == "__main__":
    main()
