// Seeded random templates for the exactness test: expressions (filters, tests, operators, methods,
// subscripts over values of every type) and statement soups (if/for/set/macro/filter blocks,
// comments, generation markers) with random whitespace and `-` trimming on every tag. Rendered
// by @huggingface/jinja; the C++ side must agree on every one.
function rng(seed) {
  // mulberry32
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const FUZZ_CONTEXT = {
  xs: [3, 1, 2], d: { b: 2, a: "x" }, s: "a,b c", n: null, f: 1.5, x: true,
  ms: [{ role: "user" }, { role: "assistant" }],
  messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "yo" }],
  m: { role: "x", content: null },
};

export function fuzzTemplates(seed, count) {
  const r = rng(seed);
  const pick = (a) => a[Math.floor(r() * a.length)];
  const atoms = ["1", "0", "-1", "2.5", "1.0", "'abc'", "''", "' a b '", "'Hé😀'", "true", "false", "none", "xs", "d",
                 "s", "n", "f", "u", "ns", "[1, 2]", "['b', 'a']", "{'k': 1}", "(1, 2)", "messages", "messages[0]", "m"];
  const filters = ["length", "trim", "upper", "lower", "title", "capitalize", "first", "last", "reverse", "sort",
                   "join", "join(', ')", "string", "int", "float", "abs", "list", "items", "tojson", "tojson(indent=2)",
                   "default('D')", "default('D', true)", "unique", "indent", "indent(2, true)", "replace('a', 'X')",
                   "map(attribute='role')", "selectattr('role')", "safe", "dictsort", "bool"];
  const tests = ["defined", "undefined", "none", "string", "number", "integer", "iterable", "mapping", "sequence",
                 "boolean", "true", "false", "odd", "even", "lower", "upper", "callable"];
  const binops = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">", "<=", ">=", "and", "or", "in", "not in", "**"];
  const methods = ["strip()", "lstrip()", "rstrip()", "split()", "split(',')", "split(' ', 1)", "startswith('a')",
                   "endswith(('c', 'x'))", "upper()", "lower()", "title()", "capitalize()", "replace('b', 'Y')",
                   "get('k')", "get('z', 9)", "items()", "keys()", "values()", "length"];
  const subscripts = ["0", "-1", "1:", "::-1", '"k"', '"role"', ":2"];
  const expr = (depth) => {
    const v = r();
    if (depth > 2 || v < 0.3) return pick(atoms);
    if (v < 0.45) return `${expr(depth + 1)} | ${pick(filters)}`;
    if (v < 0.55) return `${expr(depth + 1)} is ${pick(["", "not "])}${pick(tests)}`;
    if (v < 0.75) return `(${expr(depth + 1)} ${pick(binops)} ${expr(depth + 1)})`;
    if (v < 0.85) return `${expr(depth + 1)}.${pick(methods)}`;
    if (v < 0.92) return `${expr(depth + 1)}[${pick(subscripts)}]`;
    return `(${expr(depth + 1)} if ${expr(depth + 1)} else ${expr(depth + 1)})`;
  };
  const exprStatement = () => {
    const v = r();
    const e = expr(0);
    if (v < 0.5) return `{{ ${e} }}`;
    if (v < 0.7) return `{% for x in ${e} %}[{{ x }}{{ loop.index }}{{ loop.last }}]{% else %}E{% endfor %}`;
    if (v < 0.85) return `{% if ${e} %}T{% else %}F{% endif %}`;
    return `{% set v = ${e} %}{{ v }}`;
  };
  const ws = ["", " ", "  ", "\n", "\n\n", " \n", "\t", "\n  ", "x", "a b", "\r\n", "\u00a0", "}", "%"];
  const text = () => Array.from({ length: Math.floor(r() * 5) }, () => pick(ws)).join("");
  const L = () => pick(["{%", "{%-"]), R = () => pick(["%}", "-%}"]);
  const EL = () => pick(["{{", "{{-"]), ER = () => pick(["}}", "-}}"]);
  const block = (depth) => {
    let out = "";
    const n = 1 + Math.floor(r() * 4);
    for (let i = 0; i < n; ++i) {
      const v = r();
      out += text();
      if (v < 0.25 || depth > 2) {
        out += `${EL()} ${pick(["x", "m.role", "loop.index if loop is defined else 0", "ns.c", "1 ~ 2", "y | default(3)"])} ${ER()}`;
      } else if (v < 0.4) {
        out += `${L()} if ${pick(["x", "not x", "m"])} ${R()}${block(depth + 1)}${L()} else ${R()}${block(depth + 1)}${L()} endif ${R()}`;
      } else if (v < 0.55) {
        out += `${L()} for m in ms ${R()}${block(depth + 1)}${L()} endfor ${R()}`;
      } else if (v < 0.65) {
        out += `${L()} set ns.c = ns.c + 1 ${R()}`;
      } else if (v < 0.72) {
        out += `${pick(["{#", "{#-"])} c ${pick(["#}", "-#}"])}`;
      } else if (v < 0.8) {
        out += `${L()} macro mk${depth}(a, b='q') ${R()}${block(depth + 1)}{{ a ~ b }}${L()} endmacro ${R()}{{ mk${depth}(1) }}`;
      } else if (v < 0.86) {
        out += `${L()} set blk ${R()}${block(depth + 1)}${L()} endset ${R()}[{{ blk }}]`;
      } else if (v < 0.92) {
        out += `${L()} generation ${R()}${text()}${L()} endgeneration ${R()}`;
      } else {
        out += `${L()} filter upper ${R()}${block(depth + 1)}${L()} endfilter ${R()}`;
      }
      out += text();
    }
    return out;
  };
  const out = [];
  for (let i = 0; i < count; ++i) {
    if (i % 2 === 0) {
      const k = 1 + Math.floor(r() * 3);
      out.push("{% set ns = namespace(a=1) %}" + Array.from({ length: k }, exprStatement).join(" "));
    } else {
      out.push("{% set ns = namespace(c=0) %}" + block(0) + pick(["", "\n", "\n\n", " "]));
    }
  }
  return out;
}
