// The Jinja subset's runtime: values as HF's runtime classes, the interpreter, filters, tests and
// globals; the syntax is in jinja_syntax.cc, JavaScript string semantics in jinja_text.cc. Each
// stage mirrors the corresponding stage of @huggingface/jinja so that outputs agree byte for
// byte; comments mark the places where that requires a JavaScript quirk rather than Python
// Jinja's behaviour.
#include "server/openai/jinja.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <functional>
#include <set>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/openai/jinja_syntax.h"
#include "server/openai/jinja_text.h"

namespace sbserve::jinja {
namespace {

using namespace internal;  // NOLINT: the subset's own internals

// ---------------------------------------------------------------------------------------------
// Runtime values, mirroring HF's runtime classes.

struct Value;
struct Env;
using EnvPtr = std::shared_ptr<Env>;
using Array = std::vector<Value>;
struct Object;
struct Function;

struct Value {
  enum Kind : uint8_t { kUndefined, kNull, kBool, kInt, kFloat, kString, kArray, kObject, kNamespace, kFunction };
  Kind kind = kUndefined;
  bool b = false;
  bool tuple = false;    // kArray built from a tuple literal (HF's TupleValue)
  double n = 0;          // kInt and kFloat (JavaScript numbers are doubles)
  std::string s;
  std::shared_ptr<Array> arr;
  std::shared_ptr<Object> obj;  // kObject and kNamespace
  std::shared_ptr<Function> fn;

  static Value Undefined() { return Value(); }
  static Value Null() { Value v; v.kind = kNull; return v; }
  static Value Bool(bool x) { Value v; v.kind = kBool; v.b = x; return v; }
  static Value Int(double x) { Value v; v.kind = kInt; v.n = x; return v; }
  static Value Float(double x) { Value v; v.kind = kFloat; v.n = x; return v; }
  static Value Str(std::string x) { Value v; v.kind = kString; v.s = std::move(x); return v; }
  static Value Arr(Array x) {
    Value v;
    v.kind = kArray;
    v.arr = std::make_shared<Array>(std::move(x));
    return v;
  }
  static Value Obj(std::shared_ptr<Object> o, Kind kind = kObject) {
    Value v;
    v.kind = kind;
    v.obj = std::move(o);
    return v;
  }
  bool is_number() const { return kind == kInt || kind == kFloat; }
  bool is_mapping() const { return kind == kObject || kind == kNamespace; }
};

struct Object {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, as a JavaScript Map
  bool kwargs = false;  // HF's KeywordArgumentsValue: keyword arguments passed to a function
  const Value* Find(std::string_view key) const {
    for (const auto& [k, v] : items) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  void Set(const std::string& key, Value v) {
    for (auto& [k, old] : items) {
      if (k == key) {
        old = std::move(v);
        return;
      }
    }
    items.emplace_back(key, std::move(v));
  }
};

struct Function {
  std::function<Value(std::vector<Value>&, const EnvPtr&)> call;
};

Value MakeFunction(std::function<Value(std::vector<Value>&, const EnvPtr&)> f) {
  Value v;
  v.kind = Value::kFunction;
  v.fn = std::make_shared<Function>(Function{std::move(f)});
  return v;
}

const char* TypeName(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: return "UndefinedValue";
    case Value::kNull: return "NullValue";
    case Value::kBool: return "BooleanValue";
    case Value::kInt: return "IntegerValue";
    case Value::kFloat: return "FloatValue";
    case Value::kString: return "StringValue";
    case Value::kArray: return v.tuple ? "TupleValue" : "ArrayValue";
    case Value::kObject: return v.obj->kwargs ? "KeywordArgumentsValue" : "ObjectValue";
    case Value::kNamespace: return "NamespaceValue";
    case Value::kFunction: return "FunctionValue";
  }
  return "?";
}

// Request JSON nests as deep as a client likes; conversion, printing and destruction recurse.
constexpr int kMaxJsonDepth = 256;

Value FromJson(const nlohmann::ordered_json& j, int depth = 0) {
  if (depth > kMaxJsonDepth) Fail(absl::StrCat("template variables nest deeper than ", kMaxJsonDepth, " levels"));
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::Null();
    case nlohmann::ordered_json::value_t::boolean: return Value::Bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::Int(static_cast<double>(j.get<int64_t>()));
    case nlohmann::ordered_json::value_t::number_unsigned: return Value::Int(static_cast<double>(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float: {
      // JSON.parse cannot tell 1.0 from 1; HF types a value by Number.isInteger.
      const double x = j.get<double>();
      return std::isfinite(x) && std::trunc(x) == x ? Value::Int(x) : Value::Float(x);
    }
    case nlohmann::ordered_json::value_t::string: return Value::Str(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      Array out;
      for (const auto& e : j) out.push_back(FromJson(e, depth + 1));
      return Value::Arr(std::move(out));
    }
    case nlohmann::ordered_json::value_t::object: {
      // HF walks objects with Object.entries: array-index keys ("0", "17") first in numeric order,
      // then the others in insertion order.
      auto is_index = [](const std::string& k) {
        if (k.empty() || k.size() > 10 || (k.size() > 1 && k[0] == '0')) return false;
        for (char c : k) {
          if (!IsDigit(c)) return false;
        }
        return std::stoull(k) < 4294967295ull;
      };
      std::vector<std::pair<unsigned long long, const std::string*>> index_keys;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (is_index(it.key())) index_keys.emplace_back(std::stoull(it.key()), &it.key());
      }
      std::sort(index_keys.begin(), index_keys.end());
      auto o = std::make_shared<Object>();
      for (const auto& [n, key] : index_keys) o->Set(*key, FromJson(j.at(*key), depth + 1));
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (!is_index(it.key())) o->Set(it.key(), FromJson(it.value(), depth + 1));
      }
      return Value::Obj(std::move(o));
    }
    default: return Value::Undefined();  // binary / discarded: not produced by JSON text
  }
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: case Value::kNull: return false;
    case Value::kBool: return v.b;
    case Value::kInt: case Value::kFloat: return v.n != 0 && !std::isnan(v.n);
    case Value::kString: return !v.s.empty();
    case Value::kArray: return !v.arr->empty();
    case Value::kObject: return !v.obj->items.empty();
    case Value::kNamespace: case Value::kFunction: return true;
  }
  return false;
}

struct JsonOptions {
  int indent = 0;
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::optional<std::pair<std::string, std::string>> separators;
};

// String.prototype.localeCompare (ICU root collation, as HF's sort_keys uses) for ASCII keys:
// punctuation before digits before letters, letters case-blind, then lowercase before uppercase
// at the first case difference. Other characters sort after, by code point.
bool LocaleLess(const std::string& a, const std::string& b) {
  auto primary = [](unsigned char c) -> std::pair<int, int> {
    if (c >= 0x80) return {3, c};
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return {2, AsciiLower(static_cast<char>(c))};
    if (IsDigit(static_cast<char>(c))) return {1, c};
    return {0, c};
  };
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const auto pa = primary(a[i]), pb = primary(b[i]);
    if (pa != pb) return pa < pb;
  }
  if (a.size() != b.size()) return a.size() < b.size();
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return a[i] > b[i];  // same letter, different case: lowercase ('a' > 'A') first
  }
  return false;
}

std::string ToJson(const Value& v, const JsonOptions& o, int depth, bool undefined_to_null) {
  if (depth > 4 * kMaxJsonDepth) Fail("value nests too deeply to print");
  std::string item_sep = ", ", key_sep = ": ";
  if (o.separators) {
    item_sep = o.separators->first;
    key_sep = o.separators->second;
  } else if (o.indent > 0) {
    item_sep = ",";
  }
  switch (v.kind) {
    case Value::kNull: return "null";
    case Value::kUndefined: return undefined_to_null ? "null" : "undefined";
    case Value::kInt: case Value::kFloat:
      return std::isfinite(v.n) ? JsNumber(v.n) : "null";
    case Value::kBool: return v.b ? "true" : "false";
    case Value::kString: {
      std::string q = JsonQuote(v.s);
      return o.ensure_ascii ? AsciiSafe(q) : q;
    }
    case Value::kArray:
    case Value::kObject:
    case Value::kNamespace: {
      if (v.kind == Value::kArray && v.tuple) Fail("Cannot convert to JSON: TupleValue");
      const std::string indent(o.indent > 0 ? o.indent : 0, ' ');
      std::string base = "\n";
      for (int i = 0; i < depth; ++i) base += indent;
      const std::string child = base + indent;
      std::vector<std::string> core;
      if (v.kind == Value::kArray) {
        for (const auto& e : *v.arr) core.push_back(ToJson(e, o, depth + 1, undefined_to_null));
        std::string out = "[";
        if (o.indent > 0 && !core.empty()) {
          out += child;
          for (size_t i = 0; i < core.size(); ++i) out += (i ? item_sep + child : "") + core[i];
          return out + base + "]";
        }
        for (size_t i = 0; i < core.size(); ++i) out += (i ? item_sep : "") + core[i];
        return out + "]";
      }
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& e : v.obj->items) entries.push_back(&e);
      if (o.sort_keys) {
        std::stable_sort(entries.begin(), entries.end(), [](auto* x, auto* y) { return LocaleLess(x->first, y->first); });
      }
      for (const auto* e : entries) {
        std::string key = JsonQuote(e->first);
        if (o.ensure_ascii) key = AsciiSafe(key);
        std::string item = key + key_sep + ToJson(e->second, o, depth + 1, undefined_to_null);
        core.push_back(o.indent > 0 ? child + item : item);
      }
      std::string out = "{";
      for (size_t i = 0; i < core.size(); ++i) out += (i ? item_sep : "") + core[i];
      if (o.indent > 0 && !core.empty()) out += base;
      return out + "}";
    }
    case Value::kFunction: Fail("Cannot convert to JSON: FunctionValue");
  }
  return "";
}

// String(value) as HF's toString does (used for output, ~ and +).
std::string ToStr(const Value& v) {
  switch (v.kind) {
    case Value::kUndefined: return "undefined";
    case Value::kNull: return "null";
    case Value::kBool: return v.b ? "true" : "false";
    case Value::kInt: return JsNumber(v.n);
    case Value::kFloat: return JsFloat(v.n);
    case Value::kString: return v.s;
    case Value::kArray: case Value::kObject: case Value::kNamespace:
      return ToJson(v, JsonOptions{}, 0, false);
    case Value::kFunction: return "[function]";
  }
  return "";
}

// String(value.value): what JavaScript makes of the wrapped value where HF concatenates (`~`, `+`)
// or joins. Arrays join their elements' toString() with ","; objects are "[object Map]"; numbers
// print without FloatValue's ".0".
std::string JsValueString(const Value& v) {
  switch (v.kind) {
    case Value::kInt: case Value::kFloat: return JsNumber(v.n);
    case Value::kArray: {
      std::string out;
      for (size_t i = 0; i < v.arr->size(); ++i) out += (i ? "," : "") + ToStr((*v.arr)[i]);
      return out;
    }
    case Value::kObject: case Value::kNamespace: return "[object Map]";
    default: return ToStr(v);
  }
}

// JavaScript `===` on the wrapped values: primitives by value, containers by identity.
bool StrictEq(const Value& a, const Value& b) {
  const bool an = a.is_number(), bn = b.is_number();
  if (an || bn) return an && bn && a.n == b.n;
  if (a.kind != b.kind) {
    return false;
  }
  switch (a.kind) {
    case Value::kUndefined: case Value::kNull: return true;
    case Value::kBool: return a.b == b.b;
    case Value::kString: return a.s == b.s;
    case Value::kArray: return a.arr == b.arr;
    case Value::kObject: case Value::kNamespace: return a.obj == b.obj;
    case Value::kFunction: return a.fn == b.fn;
    default: return false;
  }
}

// Number(string) for loose equality.
double JsToNumber(const std::string& s) {
  const std::string t = Trim(s);
  if (t.empty()) return 0;
  char* end = nullptr;
  const double d = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size()) return NAN;
  return d;
}

// JavaScript `==` on the wrapped values (null == undefined, numbers against strings and booleans).
bool LooseEq(const Value& a, const Value& b) {
  auto nullish = [](const Value& v) { return v.kind == Value::kNull || v.kind == Value::kUndefined; };
  if (nullish(a) || nullish(b)) return nullish(a) && nullish(b);
  auto primitive_number = [](const Value& v, double* out) {
    if (v.is_number()) *out = v.n;
    else if (v.kind == Value::kBool) *out = v.b ? 1 : 0;
    else if (v.kind == Value::kString) *out = JsToNumber(v.s);
    else return false;
    return true;
  };
  if (a.kind == Value::kString && b.kind == Value::kString) return a.s == b.s;
  double x, y;
  if (primitive_number(a, &x) && primitive_number(b, &y)) return x == y;
  return StrictEq(a, b);
}

int CompareValues(const Value& a, const Value& b, bool case_sensitive) {
  if (a.kind == Value::kNull && b.kind == Value::kNull) return 0;
  if (a.kind == Value::kNull || b.kind == Value::kNull) {
    Fail(absl::StrCat("Cannot compare ", TypeName(a), " with ", TypeName(b)));
  }
  if (a.kind == Value::kUndefined && b.kind == Value::kUndefined) return 0;
  if (a.kind == Value::kUndefined || b.kind == Value::kUndefined) {
    Fail(absl::StrCat("Cannot compare ", TypeName(a), " with ", TypeName(b)));
  }
  auto numeric = [](const Value& v) { return v.is_number() || v.kind == Value::kBool; };
  if (numeric(a) && numeric(b)) {
    const double x = a.kind == Value::kBool ? a.b : a.n;
    const double y = b.kind == Value::kBool ? b.b : b.n;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.kind != b.kind) Fail(absl::StrCat("Cannot compare different types: ", TypeName(a), " and ", TypeName(b)));
  if (a.kind != Value::kString) Fail(absl::StrCat("Cannot compare type: ", TypeName(a)));
  std::u16string x = ToUtf16(case_sensitive ? a.s : MapCase(a.s, false));
  std::u16string y = ToUtf16(case_sensitive ? b.s : MapCase(b.s, false));
  return x < y ? -1 : x > y ? 1 : 0;
}

// HF's slice helper (Python semantics, step may be negative).
template <typename T>
std::vector<T> SliceVector(const std::vector<T>& v, std::optional<double> start_in,
                           std::optional<double> stop_in, double step) {
  const double len = static_cast<double>(v.size());
  std::vector<T> out;
  double start, stop;
  if (step >= 0) {
    start = start_in.value_or(0);
    start = start < 0 ? std::max(len + start, 0.0) : std::min(start, len);
    stop = stop_in.value_or(len);
    stop = stop < 0 ? std::max(len + stop, 0.0) : std::min(stop, len);
    if (step == 0) return out;  // JavaScript loops forever adding 0; refuse to.
    for (double i = start; i < stop; i += step) out.push_back(v[static_cast<size_t>(i)]);
  } else {
    start = start_in.value_or(len - 1);
    start = start < 0 ? std::max(len + start, -1.0) : std::min(start, len - 1);
    stop = stop_in.value_or(-1);
    stop = stop < -1 ? std::max(len + stop, -1.0) : std::min(stop, len - 1);
    for (double i = start; -i < -stop; i += step) out.push_back(v[static_cast<size_t>(i)]);
  }
  return out;
}

Value GetAttributePath(const Value& item, const std::string& path) {
  Value v = item;
  size_t from = 0;
  while (true) {
    const size_t dot = path.find('.', from);
    const std::string part = path.substr(from, dot == std::string::npos ? std::string::npos : dot - from);
    if (v.is_mapping()) {
      const Value* f = v.obj->Find(part);
      v = f ? *f : Value::Undefined();
    } else if (v.kind == Value::kArray) {
      const auto idx = JsParseInt(part);
      if (idx && *idx >= 0 && *idx < static_cast<double>(v.arr->size())) {
        v = (*v.arr)[static_cast<size_t>(*idx)];
      } else {
        return Value::Undefined();
      }
    } else {
      return Value::Undefined();
    }
    if (dot == std::string::npos) return v;
    from = dot + 1;
  }
}

// Positional arguments and the trailing keyword-arguments object, if any.
struct Args {
  std::vector<Value> positional;
  std::shared_ptr<Object> kwargs;  // never null
  const Value* At(size_t i) const { return i < positional.size() ? &positional[i] : nullptr; }
  const Value* Kw(std::string_view k) const { return kwargs->Find(k); }
  // positional i, else keyword k, else nullptr
  const Value* Get(size_t i, std::string_view k) const {
    const Value* v = At(i);
    return v ? v : Kw(k);
  }
};

Args SplitArgs(const std::vector<Value>& raw) {
  Args a;
  a.positional = raw;
  if (!a.positional.empty() && a.positional.back().kind == Value::kObject && a.positional.back().obj->kwargs) {
    a.kwargs = a.positional.back().obj;
    a.positional.pop_back();
  } else {
    a.kwargs = std::make_shared<Object>();
  }
  return a;
}

std::string Replace(const std::string& str, const std::string& old_value, const std::string& new_value,
                    std::optional<double> count) {
  if (count && *count == 0) return str;
  double remaining = (!count || *count < 0) ? INFINITY : *count;
  std::string out;
  if (old_value.empty()) {
    // The empty pattern matches before every code point and at the end.
    for (char32_t cp : CodePoints(str)) {
      if (remaining > 0) {
        out += new_value;
        --remaining;
      }
      AppendUtf8(&out, cp);
    }
    if (remaining > 0) out += new_value;
    return out;
  }
  size_t pos = 0;
  while (true) {
    const size_t hit = str.find(old_value, pos);
    if (hit == std::string::npos || remaining <= 0) break;
    out.append(str, pos, hit - pos);
    out += new_value;
    --remaining;
    pos = hit + old_value.size();
  }
  out.append(str, pos, std::string::npos);
  return out;
}

std::string TitleCase(const std::string& s) {
  // /\b\w/g -> upper: an ASCII word character not preceded by one.
  std::string out = s;
  for (size_t i = 0; i < out.size(); ++i) {
    if (IsWordChar(out[i]) && (i == 0 || !IsWordChar(out[i - 1]))) out[i] = AsciiUpper(out[i]);
  }
  return out;
}

Value StringMethod(const std::string& self, const std::string& name) {
  if (name == "length") return Value::Int(static_cast<double>(Utf16Length(self)));
  auto fn = [](auto f) { return MakeFunction(f); };
  if (name == "upper") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(MapCase(self, true)); });
  if (name == "lower") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(MapCase(self, false)); });
  if (name == "strip") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(Trim(self)); });
  if (name == "rstrip") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(TrimEnd(self)); });
  if (name == "lstrip") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(TrimStart(self)); });
  if (name == "title") return fn([self](std::vector<Value>&, const EnvPtr&) { return Value::Str(TitleCase(self)); });
  if (name == "capitalize") {
    return fn([self](std::vector<Value>&, const EnvPtr&) {
      std::u16string u = ToUtf16(self);
      if (!u.empty() && u[0] < 0xD800) u[0] = static_cast<char16_t>(UpperCp(u[0]));
      return Value::Str(FromUtf16(u));
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool starts = name == "startswith";
    return fn([self, starts, name](std::vector<Value>& args, const EnvPtr&) {
      if (args.empty()) Fail(name + "() requires at least one argument");
      auto test = [&](const std::string& p) {
        return p.size() <= self.size() &&
               (starts ? self.compare(0, p.size(), p) == 0 : self.compare(self.size() - p.size(), p.size(), p) == 0);
      };
      const Value& pattern = args[0];
      if (pattern.kind == Value::kString) return Value::Bool(test(pattern.s));
      if (pattern.kind == Value::kArray) {
        for (const auto& item : *pattern.arr) {
          if (item.kind != Value::kString) Fail(name + "() tuple elements must be strings");
          if (test(item.s)) return Value::Bool(true);
        }
        return Value::Bool(false);
      }
      Fail(name + "() argument must be a string or tuple of strings");
    });
  }
  if (name == "split") {
    return fn([self](std::vector<Value>& args, const EnvPtr&) {
      const Value sep = args.size() > 0 ? args[0] : Value::Null();
      if (sep.kind != Value::kString && sep.kind != Value::kNull) Fail("sep argument must be a string or null");
      const Value maxsplit = args.size() > 1 ? args[1] : Value::Int(-1);
      if (maxsplit.kind != Value::kInt) Fail("maxsplit argument must be a number");
      Array result;
      if (sep.kind == Value::kNull) {
        const std::string text = TrimStart(self);
        size_t i = 0;
        while (i < text.size()) {
          while (i < text.size() && SpaceAt(text, i)) i += SpaceAt(text, i);
          if (i >= text.size()) break;
          if (maxsplit.n != -1 && static_cast<double>(result.size()) >= maxsplit.n) {
            result.push_back(Value::Str(text.substr(i)));
            break;
          }
          size_t j = i;
          while (j < text.size() && !SpaceAt(text, j)) {
            char32_t cp;
            j += DecodeAt(text, j, &cp);
          }
          result.push_back(Value::Str(text.substr(i, j - i)));
          i = j;
        }
      } else {
        if (sep.s.empty()) Fail("empty separator");
        std::vector<std::string> parts;
        size_t pos = 0;
        while (true) {
          const size_t hit = self.find(sep.s, pos);
          if (hit == std::string::npos) break;
          parts.push_back(self.substr(pos, hit - pos));
          pos = hit + sep.s.size();
        }
        parts.push_back(self.substr(pos));
        if (maxsplit.n != -1 && static_cast<double>(parts.size()) > maxsplit.n) {
          const size_t keep = maxsplit.n < 0 ? 0 : static_cast<size_t>(maxsplit.n);
          std::string rest;
          for (size_t k = keep; k < parts.size(); ++k) rest += (k > keep ? sep.s : "") + parts[k];
          parts.resize(keep);
          parts.push_back(rest);
        }
        for (auto& p : parts) result.push_back(Value::Str(std::move(p)));
      }
      return Value::Arr(std::move(result));
    });
  }
  if (name == "replace") {
    return fn([self](std::vector<Value>& raw, const EnvPtr&) {
      if (raw.size() < 2) Fail("replace() requires at least two arguments");
      const Value& old_value = raw[0];
      const Value& new_value = raw[1];
      if (old_value.kind != Value::kString || new_value.kind != Value::kString) {
        Fail("replace() arguments must be strings");
      }
      Value count = Value::Null();
      if (raw.size() > 2) {
        if (raw[2].kind == Value::kObject && raw[2].obj->kwargs) {
          const Value* c = raw[2].obj->Find("count");
          count = c ? *c : Value::Null();
        } else {
          count = raw[2];
        }
      }
      if (count.kind != Value::kInt && count.kind != Value::kNull) Fail("replace() count argument must be a number or null");
      return Value::Str(Replace(self, old_value.s, new_value.s,
                                count.kind == Value::kInt ? std::optional<double>(count.n) : std::nullopt));
    });
  }
  return Value::Undefined();
}

Value ObjectItems(const Object& o) {
  Array out;
  for (const auto& [k, v] : o.items) out.push_back(Value::Arr({Value::Str(k), v}));
  return Value::Arr(std::move(out));
}

Value ObjectMethod(const std::shared_ptr<Object>& self, const std::string& name) {
  if (name == "get") {
    return MakeFunction([self](std::vector<Value>& args, const EnvPtr&) {
      const Value key = args.size() > 0 ? args[0] : Value::Undefined();
      if (key.kind != Value::kString) Fail(absl::StrCat("Object key must be a string: got ", TypeName(key)));
      if (const Value* v = self->Find(key.s)) return *v;
      return args.size() > 1 ? args[1] : Value::Null();
    });
  }
  if (name == "items") return MakeFunction([self](std::vector<Value>&, const EnvPtr&) { return ObjectItems(*self); });
  if (name == "keys") {
    return MakeFunction([self](std::vector<Value>&, const EnvPtr&) {
      Array out;
      for (const auto& kv : self->items) out.push_back(Value::Str(kv.first));
      return Value::Arr(std::move(out));
    });
  }
  if (name == "values") {
    return MakeFunction([self](std::vector<Value>&, const EnvPtr&) {
      Array out;
      for (const auto& kv : self->items) out.push_back(kv.second);
      return Value::Arr(std::move(out));
    });
  }
  if (name == "dictsort") {
    return MakeFunction([self](std::vector<Value>& raw, const EnvPtr&) {
      Args a = SplitArgs(raw);
      const Value* cs = a.Get(0, "case_sensitive");
      const Value case_sensitive = cs ? *cs : Value::Bool(false);
      if (case_sensitive.kind != Value::kBool) Fail("case_sensitive must be a boolean");
      const Value* by_p = a.Get(1, "by");
      const Value by = by_p ? *by_p : Value::Str("key");
      if (by.kind != Value::kString) Fail("by must be a string");
      if (by.s != "key" && by.s != "value") Fail("by must be either 'key' or 'value'");
      const Value* rv = a.Get(2, "reverse");
      const Value reverse = rv ? *rv : Value::Bool(false);
      if (reverse.kind != Value::kBool) Fail("reverse must be a boolean");
      Array items = *ObjectItems(*self).arr;
      const size_t idx = by.s == "key" ? 0 : 1;
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        const int r = CompareValues((*x.arr)[idx], (*y.arr)[idx], case_sensitive.b);
        return reverse.b ? r > 0 : r < 0;
      });
      return Value::Arr(std::move(items));
    });
  }
  return Value::Undefined();
}

// ---------------------------------------------------------------------------------------------
// Environments and the interpreter.

struct Env {
  EnvPtr parent;
  std::unordered_map<std::string, Value> vars;
  const Value* Lookup(const std::string& name) const {
    for (const Env* e = this; e != nullptr; e = e->parent.get()) {
      auto it = e->vars.find(name);
      if (it != e->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

EnvPtr NewEnv(EnvPtr parent) {
  auto e = std::make_shared<Env>();
  e->parent = std::move(parent);
  return e;
}

struct BreakSignal {};
struct ContinueSignal {};

// Render budget: templates are trusted more than requests but still must not hang the server.
constexpr int64_t kMaxSteps = 20'000'000;
constexpr size_t kMaxOutputBytes = 64u << 20;
constexpr int kMaxCallDepth = 200;

class Interpreter {
 public:
  std::string Block(const std::vector<NodePtr>& statements, const EnvPtr& env) {
    std::string out;
    for (const auto& st : statements) {
      Value v = Eval(st.get(), env);
      if (v.kind != Value::kNull && v.kind != Value::kUndefined) {
        out += ToStr(v);
        if (out.size() > kMaxOutputBytes) Fail("rendered output exceeds 64 MiB");
      }
    }
    return out;
  }

  Value Eval(const Node* node, const EnvPtr& env) {
    if (node == nullptr) return Value::Undefined();
    if (++steps_ > kMaxSteps) Fail("template evaluation exceeds its step budget");
    switch (node->kind) {
      case NodeKind::kProgram: return Value::Str(Block(node->body, env));
      case NodeKind::kText: case NodeKind::kString: return Value::Str(node->str);
      case NodeKind::kComment: return Value::Null();
      case NodeKind::kInt: return Value::Int(node->num);
      case NodeKind::kFloat: return Value::Float(node->num);
      case NodeKind::kIdent: {
        const Value* v = env->Lookup(node->str);
        return v ? *v : Value::Undefined();
      }
      case NodeKind::kArray: case NodeKind::kTuple: {
        Array out;
        for (const auto& k : node->kids) out.push_back(Eval(k.get(), env));
        Value v = Value::Arr(std::move(out));
        v.tuple = node->kind == NodeKind::kTuple;
        return v;
      }
      case NodeKind::kObject: {
        auto o = std::make_shared<Object>();
        for (size_t i = 0; i + 1 < node->kids.size(); i += 2) {
          Value key = Eval(node->kids[i].get(), env);
          if (key.kind != Value::kString) Fail(absl::StrCat("Object keys must be strings: got ", TypeName(key)));
          o->Set(key.s, Eval(node->kids[i + 1].get(), env));
        }
        return Value::Obj(std::move(o));
      }
      case NodeKind::kMember: return Member(node, env);
      case NodeKind::kCall: return Call(node, env);
      case NodeKind::kUnary: return Unary(node, env);
      case NodeKind::kBinary: return BinaryOp(node, env);
      case NodeKind::kFilter: return ApplyFilter(Eval(node->a.get(), env), node->b.get(), env);
      case NodeKind::kFilterBlock: return ApplyFilter(Value::Str(Block(node->body, env)), node->a.get(), env);
      case NodeKind::kTest: return Value::Bool(Test(node, env));
      case NodeKind::kSelect:
        if (!Truthy(Eval(node->b.get(), env))) return Value::Undefined();
        return Eval(node->a.get(), env);
      case NodeKind::kTernary:
        return Truthy(Eval(node->a.get(), env)) ? Eval(node->b.get(), env) : Eval(node->c.get(), env);
      case NodeKind::kIf:
        return Value::Str(Block(Truthy(Eval(node->a.get(), env)) ? node->body : node->alt, env));
      case NodeKind::kFor: return For(node, env);
      case NodeKind::kSet: return Set(node, env);
      case NodeKind::kMacro: return Macro(node, env);
      case NodeKind::kCallBlock: return CallBlock(node, env);
      case NodeKind::kBreak: throw BreakSignal{};
      case NodeKind::kContinue: throw ContinueSignal{};
      case NodeKind::kSlice: case NodeKind::kKwArg:
        Fail(absl::StrCat("unexpected expression (line ", node->line, ")"));
    }
    return Value::Undefined();
  }

 private:
  [[noreturn]] static void FailAt(const Node* node, const std::string& what) {
    Fail(absl::StrCat(what, " (line ", node->line, ")"));
  }

  Value Member(const Node* node, const EnvPtr& env) {
    Value object = Eval(node->a.get(), env);
    Value property;
    if (node->flag) {
      if (node->b->kind == NodeKind::kSlice) return Slice(object, node->b.get(), env);
      property = Eval(node->b.get(), env);
    } else if (node->b->kind == NodeKind::kInt) {
      property = Value::Int(node->b->num);
    } else {
      property = Value::Str(node->b->str);
    }
    if (object.is_mapping()) {
      if (property.kind != Value::kString) {
        FailAt(node, absl::StrCat("Cannot access property with non-string: got ", TypeName(property)));
      }
      if (const Value* v = object.obj->Find(property.s)) return *v;
      return object.kind == Value::kObject ? ObjectMethod(object.obj, property.s) : Value::Undefined();
    }
    if (object.kind == Value::kArray || object.kind == Value::kString) {
      if (property.kind == Value::kInt) {
        // Array.prototype.at / String.prototype.at (UTF-16 units for strings).
        if (object.kind == Value::kArray) {
          const double len = static_cast<double>(object.arr->size());
          const double i = property.n < 0 ? len + property.n : property.n;
          if (i < 0 || i >= len) return Value::Undefined();
          return (*object.arr)[static_cast<size_t>(i)];
        }
        const std::u16string u = ToUtf16(object.s);
        const double len = static_cast<double>(u.size());
        const double i = property.n < 0 ? len + property.n : property.n;
        if (i < 0 || i >= len) return Value::Undefined();
        return Value::Str(FromUtf16(u.substr(static_cast<size_t>(i), 1)));
      }
      if (property.kind == Value::kString) {
        if (object.kind == Value::kString) return StringMethod(object.s, property.s);
        if (property.s == "length") return Value::Int(static_cast<double>(object.arr->size()));
        return Value::Undefined();
      }
      FailAt(node, absl::StrCat("Cannot access property with non-string/non-number: got ", TypeName(property)));
    }
    if (property.kind != Value::kString) {
      FailAt(node, absl::StrCat("Cannot access property with non-string: got ", TypeName(property)));
    }
    return Value::Undefined();
  }

  Value Slice(const Value& object, const Node* slice, const EnvPtr& env) {
    if (object.kind != Value::kArray && object.kind != Value::kString) FailAt(slice, "Slice object must be an array or string");
    auto bound = [&](const Node* n, const char* what) -> std::optional<double> {
      Value v = Eval(n, env);
      if (v.kind == Value::kUndefined) return std::nullopt;
      if (v.kind != Value::kInt) FailAt(slice, absl::StrCat("Slice ", what, " must be numeric or undefined"));
      return v.n;
    };
    const auto start = bound(slice->a.get(), "start");
    const auto stop = bound(slice->b.get(), "stop");
    const auto step = bound(slice->c.get(), "step");
    if (object.kind == Value::kArray) return Value::Arr(SliceVector(*object.arr, start, stop, step.value_or(1)));
    std::string out;
    for (char32_t cp : SliceVector(CodePoints(object.s), start, stop, step.value_or(1))) AppendUtf8(&out, cp);
    return Value::Str(std::move(out));
  }

  std::vector<Value> EvalArgs(const std::vector<NodePtr>& args, const EnvPtr& env, std::shared_ptr<Object>* kwargs) {
    std::vector<Value> positional;
    *kwargs = std::make_shared<Object>();
    (*kwargs)->kwargs = true;
    for (const auto& a : args) {
      if (a->kind != NodeKind::kKwArg) positional.push_back(Eval(a.get(), env));
    }
    for (const auto& a : args) {
      if (a->kind != NodeKind::kKwArg) continue;
      if ((*kwargs)->Find(a->str)) FailAt(a.get(), absl::StrCat("Got multiple values for keyword argument '", a->str, "'"));
      (*kwargs)->Set(a->str, Eval(a->a.get(), env));
    }
    return positional;
  }

  Value Call(const Node* node, const EnvPtr& env) {
    std::shared_ptr<Object> kwargs;
    std::vector<Value> args = EvalArgs(node->kids, env, &kwargs);
    if (!kwargs->items.empty()) args.push_back(Value::Obj(kwargs));
    Value fn = Eval(node->a.get(), env);
    if (fn.kind != Value::kFunction) {
      FailAt(node, absl::StrCat("Cannot call something that is not a function: got ", TypeName(fn)));
    }
    return fn.fn->call(args, env);
  }

  Value Unary(const Node* node, const EnvPtr& env) {
    Value arg = Eval(node->a.get(), env);
    if (node->str == "not") return Value::Bool(!Truthy(arg));
    const double sign = node->str == "-" ? -1 : 1;
    if (arg.is_number() || arg.kind == Value::kBool) {
      const double x = arg.kind == Value::kBool ? (arg.b ? 1 : 0) : arg.n;
      return arg.kind == Value::kFloat ? Value::Float(sign * x) : Value::Int(sign * x);
    }
    FailAt(node, absl::StrCat("Unknown operator \"", node->str, "\" for ", TypeName(arg)));
  }

  Value BinaryOp(const Node* node, const EnvPtr& env) {
    const std::string& op = node->str;
    Value left = Eval(node->a.get(), env);
    if (op == "and") return Truthy(left) ? Eval(node->b.get(), env) : left;
    if (op == "or") return Truthy(left) ? left : Eval(node->b.get(), env);
    Value right = Eval(node->b.get(), env);
    if (op == "==") return Value::Bool(LooseEq(left, right));
    if (op == "!=") return Value::Bool(!LooseEq(left, right));
    if (left.kind == Value::kUndefined || right.kind == Value::kUndefined) {
      if (right.kind == Value::kUndefined && (op == "in" || op == "not in")) return Value::Bool(op == "not in");
      FailAt(node, absl::StrCat("Cannot perform operation ", op, " on undefined values"));
    }
    if (left.kind == Value::kNull || right.kind == Value::kNull) FailAt(node, "Cannot perform operation on null values");
    if (op == "~") return Value::Str(JsValueString(left) + JsValueString(right));
    const bool ln = left.is_number() || left.kind == Value::kBool, rn = right.is_number() || right.kind == Value::kBool;
    if (op == "**" && ln && rn) {
      const double a = left.kind == Value::kBool ? left.b : left.n;
      const double b = right.kind == Value::kBool ? right.b : right.n;
      if (a == 0 && b < 0) FailAt(node, "0.0 cannot be raised to a negative power");
      const double r = std::pow(a, b);
      if (!std::isfinite(r)) FailAt(node, "Exponentiation result is not a finite real number");
      const bool is_float = left.kind == Value::kFloat || right.kind == Value::kFloat || b < 0;
      return is_float ? Value::Float(r) : Value::Int(r);
    }
    if (left.is_number() && right.is_number()) {
      const double a = left.n, b = right.n;
      const bool is_float = left.kind == Value::kFloat || right.kind == Value::kFloat;
      auto num = [is_float](double r) { return is_float ? Value::Float(r) : Value::Int(r); };
      if (op == "+") return num(a + b);
      if (op == "-") return num(a - b);
      if (op == "*") return num(a * b);
      if (op == "/") return Value::Float(a / b);
      if (op == "//") return num(std::floor(a / b));
      if (op == "%") return num(std::fmod(a, b));
      if (op == "<") return Value::Bool(a < b);
      if (op == ">") return Value::Bool(a > b);
      if (op == ">=") return Value::Bool(a >= b);
      if (op == "<=") return Value::Bool(a <= b);
    } else if (left.kind == Value::kArray && right.kind == Value::kArray) {
      if (op == "+") {
        Array out = *left.arr;
        out.insert(out.end(), right.arr->begin(), right.arr->end());
        return Value::Arr(std::move(out));
      }
    } else if (right.kind == Value::kArray) {
      if (op == "in" || op == "not in") {
        bool member = false;
        for (const auto& x : *right.arr) {
          if (StrictEq(x, left)) {
            member = true;
            break;
          }
        }
        return Value::Bool(op == "in" ? member : !member);
      }
    }
    if (left.kind == Value::kString || right.kind == Value::kString) {
      if (op == "+") return Value::Str(JsValueString(left) + JsValueString(right));
    }
    if (left.kind == Value::kString && right.kind == Value::kString) {
      if (op == "in") return Value::Bool(right.s.find(left.s) != std::string::npos);
      if (op == "not in") return Value::Bool(right.s.find(left.s) == std::string::npos);
    }
    if (left.kind == Value::kString && right.kind == Value::kObject) {
      if (op == "in") return Value::Bool(right.obj->Find(left.s) != nullptr);
      if (op == "not in") return Value::Bool(right.obj->Find(left.s) == nullptr);
    }
    FailAt(node, absl::StrCat("Unknown operator \"", op, "\" between ", TypeName(left), " and ", TypeName(right)));
  }

  bool Test(const Node* node, const EnvPtr& env) {
    const Value v = Eval(node->a.get(), env);
    const std::string& t = node->str;
    bool r = false;
    if (t == "boolean") r = v.kind == Value::kBool;
    else if (t == "callable") r = v.kind == Value::kFunction;
    else if (t == "odd" || t == "even") {
      if (v.kind != Value::kInt) FailAt(node, absl::StrCat("cannot ", t, " on ", TypeName(v)));
      r = (std::fmod(v.n, 2) != 0) == (t == "odd");
    } else if (t == "false") r = v.kind == Value::kBool && !v.b;
    else if (t == "true") r = v.kind == Value::kBool && v.b;
    else if (t == "none") r = v.kind == Value::kNull;
    else if (t == "string") r = v.kind == Value::kString;
    else if (t == "number") r = v.is_number();
    else if (t == "integer") r = v.kind == Value::kInt;
    else if (t == "iterable") r = (v.kind == Value::kArray && !v.tuple) || v.kind == Value::kString;
    else if (t == "mapping") r = v.kind == Value::kObject;
    else if (t == "sequence") r = v.kind == Value::kArray || v.kind == Value::kObject || v.kind == Value::kString;
    else if (t == "lower") r = v.kind == Value::kString && v.s == MapCase(v.s, false);
    else if (t == "upper") r = v.kind == Value::kString && v.s == MapCase(v.s, true);
    else if (t == "defined") r = v.kind != Value::kUndefined;
    else if (t == "undefined") r = v.kind == Value::kUndefined;
    else if (t == "equalto" || t == "eq") {
      r = StrictEq(v, node->test_arg ? Eval(node->test_arg.get(), env) : Value::Undefined());
    } else if (t == "divisibleby") {
      const Value d = node->test_arg ? Eval(node->test_arg.get(), env) : Value::Undefined();
      if (!v.is_number() || !d.is_number() || d.n == 0) FailAt(node, "divisibleby needs two numbers, the divisor not 0");
      r = std::fmod(v.n, d.n) == 0;
    } else {
      FailAt(node, absl::StrCat("Unknown test: ", t));
    }
    return node->flag ? !r : r;
  }

  // The tests selectattr/rejectattr may name (two-argument form).
  bool NamedTest(const std::string& t, const Value& v, const Value& arg, const Node* at) {
    Node fake;
    fake.kind = NodeKind::kTest;
    fake.line = at->line;
    fake.str = t;
    if (!KnownTests().count(t)) FailAt(at, absl::StrCat("Unknown test: ", t));
    auto env = NewEnv(nullptr);
    env->vars["v"] = v;
    env->vars["arg"] = arg;
    fake.a = MakeNode(NodeKind::kIdent, at->line);
    fake.a->str = "v";
    fake.test_arg = MakeNode(NodeKind::kIdent, at->line);
    fake.test_arg->str = "arg";
    return Test(&fake, env);
  }

  Value ApplyFilter(const Value& operand, const Node* filter, const EnvPtr& env);
  Value For(const Node* node, const EnvPtr& env);
  Value Set(const Node* node, const EnvPtr& env);
  Value Macro(const Node* node, const EnvPtr& env);
  Value CallBlock(const Node* node, const EnvPtr& env);
  void BindArguments(const Node* node, const std::vector<NodePtr>& params, bool uses_kwargs, bool uses_varargs,
                     const std::string& display, std::vector<Value> raw, const EnvPtr& scope);

  int64_t steps_ = 0;
  int call_depth_ = 0;
};

Value Interpreter::ApplyFilter(const Value& operand, const Node* filter, const EnvPtr& env) {
  if (filter->kind != NodeKind::kIdent && (filter->kind != NodeKind::kCall || filter->a->kind != NodeKind::kIdent)) {
    FailAt(filter, "Unknown filter: an expression that is not a filter name or call");
  }
  const bool has_args = filter->kind == NodeKind::kCall;
  const std::string& name = has_args ? filter->a->str : filter->str;
  auto fail_unknown = [&](const char* type) -> Value {
    FailAt(filter, absl::StrCat("Unknown ", type, " filter: ", name));
  };
  auto join_values = [](const Array& items, const std::string& sep) {
    // Array.prototype.join over the wrapped values: null and undefined join as "".
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += sep;
      const Value& x = items[i];
      if (x.kind == Value::kNull || x.kind == Value::kUndefined) continue;
      out += JsValueString(x);
    }
    return out;
  };
  const bool is_default = name == "default" || name == "d";

  if (!has_args) {
    if (name == "safe") return operand;
    if (name == "tojson") return Value::Str(ToJson(operand, JsonOptions{}, 0, true));
    if (is_default) return operand.kind == Value::kUndefined ? Value::Str("") : operand;
    if (operand.kind == Value::kArray) {
      const Array& a = *operand.arr;
      if (name == "list") return operand;
      if (name == "first") return a.empty() ? Value::Undefined() : a.front();
      if (name == "last") return a.empty() ? Value::Undefined() : a.back();
      if (name == "length" || name == "count") return Value::Int(static_cast<double>(a.size()));
      if (name == "reverse") return Value::Arr(Array(a.rbegin(), a.rend()));
      if (name == "sort") {
        Array out = a;
        std::stable_sort(out.begin(), out.end(), [](const Value& x, const Value& y) { return CompareValues(x, y, false) < 0; });
        return Value::Arr(std::move(out));
      }
      if (name == "join") return Value::Str(join_values(a, ""));
      if (name == "string") return Value::Str(ToJson(operand, JsonOptions{}, 0, false));
      if (name == "unique") {
        Array out;
        for (const auto& x : a) {
          bool seen = false;
          for (const auto& y : out) seen = seen || StrictEq(x, y);
          if (!seen) out.push_back(x);
        }
        return Value::Arr(std::move(out));
      }
      return fail_unknown("ArrayValue");
    }
    if (operand.kind == Value::kString) {
      const std::string& s = operand.s;
      if (name == "length" || name == "count") return Value::Int(static_cast<double>(Utf16Length(s)));
      if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
        std::vector<Value> none;
        return StringMethod(s, name).fn->call(none, env);
      }
      if (name == "trim") return Value::Str(Trim(s));
      if (name == "indent") {
        std::string out;
        size_t from = 0, i = 0;
        while (true) {
          const size_t nl = s.find('\n', from);
          const std::string line = s.substr(from, nl == std::string::npos ? std::string::npos : nl - from);
          if (i > 0) out += "\n";
          out += (i == 0 || line.empty()) ? line : "    " + line;
          if (nl == std::string::npos) break;
          from = nl + 1;
          ++i;
        }
        return Value::Str(out);
      }
      if (name == "join" || name == "string") return operand;
      if (name == "int") {
        const auto v = JsParseInt(s);
        return Value::Int(v ? *v : 0);
      }
      if (name == "float") {
        const auto v = JsParseFloat(s);
        return Value::Float(v ? *v : 0);
      }
      return fail_unknown("StringValue");
    }
    if (operand.is_number()) {
      if (name == "abs") return operand.kind == Value::kInt ? Value::Int(std::fabs(operand.n)) : Value::Float(std::fabs(operand.n));
      if (name == "int") return Value::Int(std::floor(operand.n));
      if (name == "float") return Value::Float(operand.n);
      if (name == "string") return Value::Str(ToStr(operand));
      return fail_unknown("NumericValue");
    }
    if (operand.kind == Value::kObject) {
      if (name == "items") return ObjectItems(*operand.obj);
      if (name == "length" || name == "count") return Value::Int(static_cast<double>(operand.obj->items.size()));
      Value builtin = ObjectMethod(operand.obj, name);
      if (builtin.kind == Value::kFunction) {
        std::vector<Value> none;
        return builtin.fn->call(none, env);
      }
      return fail_unknown("ObjectValue");
    }
    if (operand.kind == Value::kBool) {
      if (name == "bool") return operand;
      if (name == "int") return Value::Int(operand.b ? 1 : 0);
      if (name == "float") return Value::Float(operand.b ? 1 : 0);
      if (name == "string") return Value::Str(operand.b ? "true" : "false");
      return fail_unknown("BooleanValue");
    }
    FailAt(filter, absl::StrCat("Cannot apply filter \"", name, "\" to type: ", TypeName(operand)));
  }

  std::shared_ptr<Object> kw;
  if (name == "tojson") {
    EvalArgs(filter->kids, env, &kw);
    JsonOptions o;
    if (const Value* v = kw->Find("indent")) {
      if (v->kind != Value::kInt && v->kind != Value::kNull) FailAt(filter, "If set, indent must be a number");
      o.indent = v->kind == Value::kInt && v->n > 0 ? static_cast<int>(std::min(v->n, 64.0)) : 0;
    }
    if (const Value* v = kw->Find("ensure_ascii")) {
      if (v->kind != Value::kBool) FailAt(filter, "If set, ensure_ascii must be a boolean");
      o.ensure_ascii = v->b;
    }
    if (const Value* v = kw->Find("sort_keys")) {
      if (v->kind != Value::kBool) FailAt(filter, "If set, sort_keys must be a boolean");
      o.sort_keys = v->b;
    }
    if (const Value* v = kw->Find("separators"); v && v->kind != Value::kNull) {
      if (v->kind != Value::kArray || v->arr->size() != 2 || (*v->arr)[0].kind != Value::kString ||
          (*v->arr)[1].kind != Value::kString) {
        FailAt(filter, "separators must be a tuple of two strings");
      }
      o.separators = std::make_pair((*v->arr)[0].s, (*v->arr)[1].s);
    }
    return Value::Str(ToJson(operand, o, 0, true));
  }
  if (name == "join") {
    Array items;
    if (operand.kind == Value::kString) {
      for (char32_t cp : CodePoints(operand.s)) {
        std::string one;
        AppendUtf8(&one, cp);
        items.push_back(Value::Str(std::move(one)));
      }
    } else if (operand.kind == Value::kArray) {
      items = *operand.arr;
    } else {
      FailAt(filter, absl::StrCat("Cannot apply filter \"join\" to type: ", TypeName(operand)));
    }
    std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
    const Value* sep = !pos.empty() ? &pos[0] : kw->Find("separator");
    const Value separator = sep ? *sep : Value::Str("");
    if (separator.kind != Value::kString) FailAt(filter, "separator must be a string");
    return Value::Str(join_values(items, separator.s));
  }
  if (name == "int" || name == "float") {
    std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
    const Value* d = !pos.empty() ? &pos[0] : kw->Find("default");
    const bool is_int = name == "int";
    const Value default_value = d ? *d : (is_int ? Value::Int(0) : Value::Float(0));
    if (operand.kind == Value::kString) {
      const auto v = is_int ? JsParseInt(operand.s) : JsParseFloat(operand.s);
      if (!v) return default_value;
      return is_int ? Value::Int(*v) : Value::Float(*v);
    }
    if (operand.is_number()) return operand;
    if (operand.kind == Value::kBool) return is_int ? Value::Int(operand.b ? 1 : 0) : Value::Float(operand.b ? 1 : 0);
    FailAt(filter, absl::StrCat("Cannot apply filter \"", name, "\" to type: ", TypeName(operand)));
  }
  if (is_default) {
    std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
    const Value default_value = !pos.empty() ? pos[0] : Value::Str("");
    const Value* bp = pos.size() > 1 ? &pos[1] : kw->Find("boolean");
    const Value boolean = bp ? *bp : Value::Bool(false);
    if (boolean.kind != Value::kBool) FailAt(filter, "`default` filter flag must be a boolean");
    if (operand.kind == Value::kUndefined || (boolean.b && !Truthy(operand))) return default_value;
    return operand;
  }
  if (operand.kind == Value::kArray) {
    const Array& a = *operand.arr;
    if (name == "sort") {
      std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
      auto get = [&](size_t i, const char* k) -> const Value* { return i < pos.size() ? &pos[i] : kw->Find(k); };
      const Value reverse = get(0, "reverse") ? *get(0, "reverse") : Value::Bool(false);
      if (reverse.kind != Value::kBool) FailAt(filter, "reverse must be a boolean");
      const Value cs = get(1, "case_sensitive") ? *get(1, "case_sensitive") : Value::Bool(false);
      if (cs.kind != Value::kBool) FailAt(filter, "case_sensitive must be a boolean");
      const Value attribute = get(2, "attribute") ? *get(2, "attribute") : Value::Null();
      if (attribute.kind != Value::kString && attribute.kind != Value::kInt && attribute.kind != Value::kNull) {
        FailAt(filter, "attribute must be a string, integer, or null");
      }
      auto key = [&](const Value& item) {
        if (attribute.kind == Value::kNull) return item;
        return GetAttributePath(item, attribute.kind == Value::kInt ? JsNumber(attribute.n) : attribute.s);
      };
      Array out = a;
      std::stable_sort(out.begin(), out.end(), [&](const Value& x, const Value& y) {
        const int r = CompareValues(key(x), key(y), cs.b);
        return reverse.b ? r > 0 : r < 0;
      });
      return Value::Arr(std::move(out));
    }
    if (name == "selectattr" || name == "rejectattr") {
      const bool select = name == "selectattr";
      for (const auto& item : a) {
        if (!item.is_mapping()) FailAt(filter, absl::StrCat("`", name, "` can only be applied to array of objects"));
      }
      for (const auto& arg : filter->kids) {
        if (arg->kind != NodeKind::kString) FailAt(filter, absl::StrCat("arguments of `", name, "` must be strings"));
      }
      if (filter->kids.empty()) FailAt(filter, absl::StrCat("`", name, "` needs an attribute name"));
      const std::string& attr = filter->kids[0]->str;
      const std::string* test = filter->kids.size() > 1 ? &filter->kids[1]->str : nullptr;
      const Value test_arg = filter->kids.size() > 2 ? Value::Str(filter->kids[2]->str) : Value::Undefined();
      if (test && !KnownTests().count(*test)) FailAt(filter, absl::StrCat("Unknown test: ", *test));
      Array out;
      for (const auto& item : a) {
        const Value* v = item.obj->Find(attr);
        bool r = false;
        if (v) r = test ? NamedTest(*test, *v, test_arg, filter) : Truthy(*v);
        if (r == select) out.push_back(item);
      }
      return Value::Arr(std::move(out));
    }
    if (name == "map") {
      EvalArgs(filter->kids, env, &kw);
      const Value* attr = kw->Find("attribute");
      if (!attr) FailAt(filter, "`map` expressions without `attribute` set are not currently supported.");
      if (attr->kind != Value::kString) FailAt(filter, "attribute must be a string");
      const Value* d = kw->Find("default");
      Array out;
      for (const auto& item : a) {
        if (!item.is_mapping()) FailAt(filter, "items in map must be an object");
        Value v = GetAttributePath(item, attr->s);
        out.push_back(v.kind == Value::kUndefined && d ? *d : v);
      }
      return Value::Arr(std::move(out));
    }
    return fail_unknown("ArrayValue");
  }
  if (operand.kind == Value::kString) {
    if (name == "indent") {
      std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
      auto get = [&](size_t i, const char* k) -> const Value* { return i < pos.size() ? &pos[i] : kw->Find(k); };
      const Value width = get(0, "width") ? *get(0, "width") : Value::Int(4);
      if (width.kind != Value::kInt) FailAt(filter, "width must be a number");
      const bool first = get(1, "first") && Truthy(*get(1, "first"));
      const bool blank = get(2, "blank") && Truthy(*get(2, "blank"));
      const std::string pad(width.n > 0 ? static_cast<size_t>(std::min(width.n, 1024.0)) : 0, ' ');
      const std::string& s = operand.s;
      std::string out;
      size_t from = 0, i = 0;
      while (true) {
        const size_t nl = s.find('\n', from);
        const std::string line = s.substr(from, nl == std::string::npos ? std::string::npos : nl - from);
        if (i > 0) out += "\n";
        out += ((!first && i == 0) || (!blank && line.empty())) ? line : pad + line;
        if (nl == std::string::npos) break;
        from = nl + 1;
        ++i;
      }
      return Value::Str(out);
    }
    if (name == "replace") {
      std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
      pos.push_back(Value::Obj(kw));
      return StringMethod(operand.s, "replace").fn->call(pos, env);
    }
    return fail_unknown("StringValue");
  }
  if (operand.kind == Value::kObject) {
    Value builtin = ObjectMethod(operand.obj, name);
    if (builtin.kind == Value::kFunction) {
      std::vector<Value> pos = EvalArgs(filter->kids, env, &kw);
      if (!kw->items.empty()) pos.push_back(Value::Obj(kw));
      return builtin.fn->call(pos, env);
    }
    return fail_unknown("ObjectValue");
  }
  FailAt(filter, absl::StrCat("Cannot apply filter \"", name, "\" to type: ", TypeName(operand)));
}

Value Interpreter::For(const Node* node, const EnvPtr& env) {
  EnvPtr scope = NewEnv(env);
  const Node* test = nullptr;
  Value iterable;
  if (node->b->kind == NodeKind::kSelect) {
    iterable = Eval(node->b->a.get(), scope);
    test = node->b->b.get();
  } else {
    iterable = Eval(node->b.get(), scope);
  }
  if (iterable.kind == Value::kObject) {
    Array keys;
    for (const auto& kv : iterable.obj->items) keys.push_back(Value::Str(kv.first));
    iterable = Value::Arr(std::move(keys));
  } else if (iterable.kind != Value::kArray) {
    FailAt(node, absl::StrCat("Expected iterable or object type in for loop: got ", TypeName(iterable)));
  }
  const Node* loopvar = node->a.get();
  auto bind = [&](const EnvPtr& target, const Value& current) {
    if (loopvar->kind == NodeKind::kIdent) {
      target->vars[loopvar->str] = current;
      return;
    }
    if (current.kind != Value::kArray || current.tuple) {
      FailAt(node, absl::StrCat("Cannot unpack non-iterable type: ", TypeName(current)));
    }
    if (loopvar->kids.size() != current.arr->size()) {
      FailAt(node, absl::StrCat("Too ", loopvar->kids.size() > current.arr->size() ? "few" : "many", " items to unpack"));
    }
    for (size_t j = 0; j < loopvar->kids.size(); ++j) {
      if (loopvar->kids[j]->kind != NodeKind::kIdent) FailAt(node, "Cannot unpack non-identifier type");
      target->vars[loopvar->kids[j]->str] = (*current.arr)[j];
    }
  };
  Array items;
  for (const Value& current : *iterable.arr) {
    if (test) {
      EnvPtr loop_scope = NewEnv(scope);
      bind(loop_scope, current);
      if (!Truthy(Eval(test, loop_scope))) continue;
    }
    items.push_back(current);
  }
  std::string result;
  bool no_iteration = true;
  const double len = static_cast<double>(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    auto loop = std::make_shared<Object>();
    const double d = static_cast<double>(i);
    loop->items = {
        {"index", Value::Int(d + 1)},         {"index0", Value::Int(d)},
        {"revindex", Value::Int(len - d)},    {"revindex0", Value::Int(len - d - 1)},
        {"first", Value::Bool(i == 0)},       {"last", Value::Bool(i + 1 == items.size())},
        {"length", Value::Int(len)},
        {"previtem", i > 0 ? items[i - 1] : Value::Undefined()},
        {"nextitem", i + 1 < items.size() ? items[i + 1] : Value::Undefined()},
    };
    scope->vars["loop"] = Value::Obj(std::move(loop));
    bind(scope, items[i]);
    try {
      result += Block(node->body, scope);
    } catch (const ContinueSignal&) {
      continue;
    } catch (const BreakSignal&) {
      break;
    }
    // As in HF, an iteration left by break or continue does not count as one for `else`.
    no_iteration = false;
  }
  if (no_iteration) result += Block(node->alt, scope);
  return Value::Str(std::move(result));
}

Value Interpreter::Set(const Node* node, const EnvPtr& env) {
  Value rhs = node->b ? Eval(node->b.get(), env) : Value::Str(Block(node->body, env));
  const Node* target = node->a.get();
  if (target->kind == NodeKind::kIdent) {
    env->vars[target->str] = std::move(rhs);
  } else if (target->kind == NodeKind::kTuple) {
    if (rhs.kind != Value::kArray) FailAt(node, absl::StrCat("Cannot unpack non-iterable type in set: ", TypeName(rhs)));
    if (rhs.arr->size() != target->kids.size()) {
      FailAt(node, absl::StrCat("Too ", target->kids.size() > rhs.arr->size() ? "few" : "many", " items to unpack in set"));
    }
    for (size_t i = 0; i < target->kids.size(); ++i) {
      if (target->kids[i]->kind != NodeKind::kIdent) FailAt(node, "Cannot unpack to non-identifier in set");
      env->vars[target->kids[i]->str] = (*rhs.arr)[i];
    }
  } else {
    Value object = Eval(target->a.get(), env);
    if (object.kind != Value::kNamespace) FailAt(node, "cannot assign attribute on non-namespace object");
    if (target->flag || target->b->kind != NodeKind::kIdent) FailAt(node, "Cannot assign to member with non-identifier property");
    object.obj->Set(target->b->str, std::move(rhs));
  }
  return Value::Null();
}

void Interpreter::BindArguments(const Node* node, const std::vector<NodePtr>& params, bool uses_kwargs,
                                bool uses_varargs, const std::string& display, std::vector<Value> raw,
                                const EnvPtr& scope) {
  std::shared_ptr<Object> kwargs = std::make_shared<Object>();
  if (!raw.empty() && raw.back().kind == Value::kObject && raw.back().obj->kwargs) {
    kwargs->items = raw.back().obj->items;
    raw.pop_back();
  }
  std::vector<std::pair<std::string, const Node*>> pending;
  for (size_t i = 0; i < params.size(); ++i) {
    const Node* p = params[i].get();
    const std::string& name = p->str;
    std::optional<Value> value;
    if (i < raw.size()) value = raw[i];
    if (!value) {
      for (auto it = kwargs->items.begin(); it != kwargs->items.end(); ++it) {
        if (it->first == name) {
          value = it->second;
          kwargs->items.erase(it);
          break;
        }
      }
    }
    if (!value && p->kind == NodeKind::kKwArg) pending.emplace_back(name, p->a.get());
    scope->vars[name] = value ? *value : Value::Undefined();
  }
  if (uses_kwargs) {
    scope->vars["kwargs"] = Value::Obj(kwargs);
  } else if (!kwargs->items.empty()) {
    FailAt(node, absl::StrCat("macro ", display, " takes no keyword argument '", kwargs->items.front().first, "'"));
  }
  if (uses_varargs) {
    Array rest;
    for (size_t i = params.size(); i < raw.size(); ++i) rest.push_back(raw[i]);
    scope->vars["varargs"] = Value::Arr(std::move(rest));
  } else if (raw.size() > params.size()) {
    FailAt(node, absl::StrCat("macro ", display, " takes not more than ", params.size(), " argument(s)"));
  }
  for (const auto& [name, def] : pending) scope->vars[name] = Eval(def, scope);
}

Value Interpreter::Macro(const Node* node, const EnvPtr& env) {
  env->vars[node->str] = MakeFunction([this, node](std::vector<Value>& args, const EnvPtr& scope) {
    if (++call_depth_ > kMaxCallDepth) FailAt(node, "macro calls nested too deeply");
    EnvPtr macro_scope = NewEnv(scope);
    BindArguments(node, node->kids, node->uses_kwargs, node->uses_varargs, "'" + node->str + "'", args, macro_scope);
    Value out = Value::Str(Block(node->body, macro_scope));
    --call_depth_;
    return out;
  });
  return Value::Null();
}

Value Interpreter::CallBlock(const Node* node, const EnvPtr& env) {
  Value caller = MakeFunction([this, node, env](std::vector<Value>& args, const EnvPtr&) {
    if (++call_depth_ > kMaxCallDepth) FailAt(node, "macro calls nested too deeply");
    EnvPtr block_env = NewEnv(env);
    BindArguments(node, node->kids, node->uses_kwargs, node->uses_varargs, "None", args, block_env);
    Value out = Value::Str(Block(node->body, block_env));
    --call_depth_;
    return out;
  });
  std::shared_ptr<Object> kw;
  std::vector<Value> args = EvalArgs(node->a->kids, env, &kw);
  args.push_back(Value::Obj(kw));
  Value fn = Eval(node->a->a.get(), env);
  if (fn.kind != Value::kFunction) {
    FailAt(node, absl::StrCat("Cannot call something that is not a function: got ", TypeName(fn)));
  }
  EnvPtr call_env = NewEnv(env);
  call_env->vars["caller"] = std::move(caller);
  return fn.fn->call(args, call_env);
}

std::string StrftimeNow(const std::string& format) {
  static const char* kShort[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  static const char* kLong[] = {"January", "February", "March",     "April",   "May",      "June",
                                "July",    "August",   "September", "October", "November", "December"};
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  auto pad2 = [](int v) { return v < 10 ? "0" + std::to_string(v) : std::to_string(v); };
  std::string out;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] == '%' && i + 1 < format.size()) {
      const char c = format[i + 1];
      std::string r;
      switch (c) {
        case 'Y': r = std::to_string(tm.tm_year + 1900); break;
        case 'm': r = pad2(tm.tm_mon + 1); break;
        case 'd': r = pad2(tm.tm_mday); break;
        case 'b': r = kShort[tm.tm_mon]; break;
        case 'B': r = kLong[tm.tm_mon]; break;
        case 'H': r = pad2(tm.tm_hour); break;
        case 'M': r = pad2(tm.tm_min); break;
        case '%': r = "%"; break;
        default: break;
      }
      if (!r.empty()) {
        out += r;
        ++i;
        continue;
      }
    }
    out.push_back(format[i]);
  }
  return out;
}

void DeclareGlobals(Env* env) {
  auto& v = env->vars;
  v["false"] = v["False"] = Value::Bool(false);
  v["true"] = v["True"] = Value::Bool(true);
  v["none"] = v["None"] = Value::Null();
  v["raise_exception"] = MakeFunction([](std::vector<Value>& args, const EnvPtr&) -> Value {
    if (args.empty() || args[0].kind == Value::kUndefined) Fail("");
    Fail(JsValueString(args[0]));
  });
  v["range"] = MakeFunction([](std::vector<Value>& args, const EnvPtr&) {
    Args a = SplitArgs(args);
    auto num = [&](size_t i) -> std::optional<double> {
      if (i >= a.positional.size()) return std::nullopt;
      const Value& x = a.positional[i];
      if (!x.is_number()) Fail(absl::StrCat("range() arguments must be numbers, got ", TypeName(x)));
      return x.n;
    };
    if (a.positional.empty()) Fail("range() expects at least one argument");
    double start = *num(0), step = num(2).value_or(1);
    std::optional<double> stop = num(1);
    if (!stop) {
      stop = start;
      start = 0;
    }
    if (step == 0) Fail("range() step must not be zero");
    const double count = std::ceil((*stop - start) / step);
    if (count > 10'000'000) Fail("range() too long");
    Array out;
    if (step > 0) {
      for (double i = start; i < *stop; i += step) out.push_back(Value::Int(i));
    } else {
      for (double i = start; i > *stop; i += step) out.push_back(Value::Int(i));
    }
    return Value::Arr(std::move(out));
  });
  v["strftime_now"] = MakeFunction([](std::vector<Value>& args, const EnvPtr&) {
    return Value::Str(StrftimeNow(args.empty() ? "" : ToStr(args[0])));
  });
  v["namespace"] = MakeFunction([](std::vector<Value>& args, const EnvPtr&) {
    Args a = SplitArgs(args);
    if (a.positional.size() > 1) Fail(absl::StrCat("namespace expected at most 1 argument, got ", a.positional.size()));
    auto entries = std::make_shared<Object>();
    if (a.positional.size() == 1) {
      const Value& src = a.positional[0];
      if (src.kind == Value::kObject) {
        for (const auto& [k, x] : src.obj->items) entries->Set(k, x);
      } else if (src.kind == Value::kArray) {
        for (const auto& pair : *src.arr) {
          if (pair.kind != Value::kArray || pair.arr->size() != 2 || (*pair.arr)[0].kind != Value::kString) {
            Fail("namespace expected an object or an iterable of [key, value] pairs");
          }
          entries->Set((*pair.arr)[0].s, (*pair.arr)[1]);
        }
      } else {
        Fail(absl::StrCat("'", TypeName(src), "' object is not iterable"));
      }
    }
    for (const auto& [k, x] : a.kwargs->items) entries->Set(k, x);
    return Value::Obj(std::move(entries), Value::kNamespace);
  });
}

}  // namespace

absl::StatusOr<Template> Template::Parse(std::string_view source) {
  try {
    std::unique_ptr<Program> program = ParseProgram(source);
    return Template(std::shared_ptr<const Program>(std::move(program)));
  } catch (const JinjaError& e) {
    return absl::InvalidArgumentError(absl::StrCat("chat template: ", e.what()));
  }
}

absl::StatusOr<std::string> Template::Render(const nlohmann::ordered_json& context) const {
  if (!context.is_object() && !context.is_null()) {
    return absl::InvalidArgumentError("chat template: the render context must be a JSON object");
  }
  try {
    EnvPtr global = NewEnv(nullptr);
    DeclareGlobals(global.get());
    if (context.is_object()) {
      for (auto it = context.begin(); it != context.end(); ++it) {
        if (global->vars.count(it.key())) Fail(absl::StrCat("Variable already declared: ", it.key()));
        global->vars[it.key()] = FromJson(it.value());
      }
    }
    Interpreter interpreter;
    return interpreter.Block(program_->body, global);
  } catch (const JinjaError& e) {
    return absl::InvalidArgumentError(e.what());
  } catch (const BreakSignal&) {
    return absl::InvalidArgumentError("chat template: 'break' outside a loop");
  } catch (const ContinueSignal&) {
    return absl::InvalidArgumentError("chat template: 'continue' outside a loop");
  }
}

Template::Template(std::shared_ptr<const Program> program) : program_(std::move(program)) {}
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;
Template::~Template() = default;

}  // namespace sbserve::jinja
