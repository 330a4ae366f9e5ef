// The environment CouchDB's JavaScript query server gives design-document functions: `emit`,
// `log`, `sum`, `toJSON`, `isArray` and `require` (CommonJS modules stored in the design
// document). The engine has no file, network or process access; `Date` and `Math.random` are
// there, as in CouchDB. Every call comes in as JSON text through `__outpost_dispatch` and
// answers JSON text; a function that throws is answered per document, never fatally.
(function (global, tick) {
  "use strict";
  var compiled = new Map();
  var MAX_COMPILED = 256;
  var emitted = null;
  var logs = [];

  function emit(key, value) {
    if (emitted === null) {
      throw new Error("emit() is only available in a map function");
    }
    emitted.push([key === undefined ? null : key, value === undefined ? null : value]);
  }
  function log(message) {
    if (typeof message !== "string") {
      message = JSON.stringify(message);
    }
    if (logs.length < 100) {
      logs.push(String(message));
    }
  }
  function sum(values) {
    var total = 0;
    for (var i = 0; i < values.length; i++) {
      total += values[i];
    }
    return total;
  }
  function toJSON(value) {
    return JSON.stringify(value);
  }
  function isArray(value) {
    return Array.isArray(value);
  }
  global.emit = emit;
  global.log = log;
  global.sum = sum;
  global.toJSON = toJSON;
  global.isArray = isArray;

  function describe(error) {
    if (error && typeof error === "object") {
      if (Array.isArray(error)) {
        return error.length > 2 ? String(error[2]) : JSON.stringify(error);
      }
      if (error.message !== undefined) {
        return (error.name ? error.name + ": " : "") + error.message;
      }
      try {
        return JSON.stringify(error);
      } catch (e) {
        return String(error);
      }
    }
    return String(error);
  }

  // CouchDB's module resolution: `require("views/lib/x")` from the top, `./` and `../`
  // relative to the requiring module's directory. A node is `{current, parent, id}`.
  function resolveModule(names, node) {
    for (var i = 0; i < names.length; i++) {
      var n = names[i];
      if (n === "." || n === "") {
        continue;
      }
      if (n === "..") {
        if (!node.parent) {
          throw new Error("Object has no parent " + JSON.stringify(node.current));
        }
        node = node.parent;
        continue;
      }
      if (node.current === null || typeof node.current !== "object" || node.current[n] === undefined) {
        throw new Error("Object has no property \"" + n + "\". " + JSON.stringify(node.current));
      }
      node = { current: node.current[n], parent: node, id: node.id ? node.id + "/" + n : n };
    }
    if (typeof node.current !== "string") {
      throw new Error("Must require a JavaScript string, not: " + typeof node.current);
    }
    return { current: node.current, parent: node.parent, id: node.id, exports: {} };
  }

  function makeRequire(root) {
    var cache = {};
    var top = { current: root, parent: null, id: "" };
    function require(name, from) {
      var module = resolveModule(String(name).split("/"), from || top);
      if (!Object.prototype.hasOwnProperty.call(cache, module.id)) {
        cache[module.id] = {};
        var factory = (0, eval)("(function (module, exports, require) { " + module.current + "\n})");
        factory.call(global, module, module.exports, function (child) {
          // Relative to the requiring module's directory; absolute paths from the top.
          var relative = /^\.\.?\//.test(String(child));
          return require(child, relative ? module.parent : top);
        });
        cache[module.id] = module.exports;
      }
      return cache[module.id];
    }
    return function (name) {
      return require(name, top);
    };
  }

  function compile(source, root) {
    var text = String(source).replace(/[\s;]+$/, "");
    var factory = new Function("require", "return (" + text + "\n);");
    var fn = factory(makeRequire(root || {}));
    if (typeof fn !== "function") {
      throw new Error("expression does not eval to a function. (" + String(source) + ")");
    }
    return fn;
  }

  // Compiled functions are kept per signature (the caller's hash of the design document's
  // relevant parts), so a design document's functions compile once per engine.
  function cached(sig, make) {
    var hit = compiled.get(sig);
    if (hit === undefined) {
      if (compiled.size >= MAX_COMPILED) {
        compiled.clear();
      }
      hit = make();
      compiled.set(sig, hit);
    }
    return hit;
  }

  function compileAll(sig, sources, root) {
    return cached(sig, function () {
      return sources.map(function (source) {
        try {
          return { fn: compile(source, root) };
        } catch (e) {
          return { error: "compilation_error: " + describe(e) };
        }
      });
    });
  }

  function map(args) {
    var fns = compileAll(args.sig, args.sources, args.lib ? { views: { lib: args.lib } } : {});
    return args.docs.map(function (doc) {
      return fns.map(function (f) {
        if (f.error) {
          return { error: f.error };
        }
        tick();
        emitted = [];
        try {
          // Each function sees its own copy, so one cannot change what the next one maps.
          f.fn(JSON.parse(doc));
          return emitted;
        } catch (e) {
          return { error: describe(e) };
        } finally {
          emitted = null;
        }
      });
    });
  }

  function numberSum(a, b, path) {
    if (typeof a === "number" && typeof b === "number") {
      return a + b;
    }
    // A number summed with an array adds to its first element, as CouchDB's _sum does.
    if (typeof a === "number" && Array.isArray(b)) {
      return numberSum([a], b);
    }
    if (Array.isArray(a) && typeof b === "number") {
      return numberSum(a, [b]);
    }
    if (Array.isArray(a) && Array.isArray(b)) {
      var out = [];
      for (var i = 0; i < Math.max(a.length, b.length); i++) {
        out.push(i >= a.length ? b[i] : i >= b.length ? a[i] : numberSum(a[i], b[i]));
      }
      return out;
    }
    if (a && b && typeof a === "object" && typeof b === "object" && !Array.isArray(a) && !Array.isArray(b)) {
      var res = {};
      Object.keys(a).forEach(function (k) { res[k] = a[k]; });
      Object.keys(b).forEach(function (k) {
        res[k] = Object.prototype.hasOwnProperty.call(res, k) ? numberSum(res[k], b[k]) : b[k];
      });
      return res;
    }
    throw { builtin: "The _sum function requires that map values be numbers, arrays of numbers, or objects. Objects cannot be mixed with other data structures. Objects can be arbitrarily nested, provided that the values for all fields are themselves numbers, arrays of numbers, or objects." };
  }

  function checkSummable(v) {
    if (typeof v === "number") return;
    if (Array.isArray(v)) { v.forEach(checkSummable); return; }
    if (v && typeof v === "object") { Object.keys(v).forEach(function (k) { checkSummable(v[k]); }); return; }
    numberSum(v, v);
  }

  function isStats(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v) &&
      typeof v.sum === "number" && typeof v.count === "number";
  }
  function oneStats(v) {
    if (typeof v === "number") {
      return { sum: v, count: 1, min: v, max: v, sumsqr: v * v };
    }
    if (isStats(v)) {
      return {
        sum: v.sum, count: v.count,
        min: typeof v.min === "number" ? v.min : v.sum,
        max: typeof v.max === "number" ? v.max : v.sum,
        sumsqr: typeof v.sumsqr === "number" ? v.sumsqr : 0
      };
    }
    throw { builtin: "Invalid value for _stats: " + JSON.stringify(v) };
  }
  function mergeStats(a, b) {
    return {
      sum: a.sum + b.sum, count: a.count + b.count, min: Math.min(a.min, b.min),
      max: Math.max(a.max, b.max), sumsqr: a.sumsqr + b.sumsqr
    };
  }
  // CouchDB 3's _stats: numbers (or statistics objects) give one statistics object; arrays of
  // numbers give an array of them, element by element, and must all be as long.
  function stats(values) {
    var out;
    values.forEach(function (v) {
      var s = Array.isArray(v) ? v.map(oneStats) : oneStats(v);
      if (out === undefined) {
        out = s;
      } else if (Array.isArray(out) !== Array.isArray(s)) {
        throw { builtin: "The _stats function requires that map values be numbers or arrays of numbers, not a mix of both" };
      } else if (Array.isArray(out)) {
        if (out.length !== s.length) {
          throw { builtin: "The _stats function requires that arrays of numbers all have the same length" };
        }
        out = out.map(function (o, i) { return mergeStats(o, s[i]); });
      } else {
        out = mergeStats(out, s);
      }
    });
    return out === undefined ? { sum: 0, count: 0, min: 0, max: 0, sumsqr: 0 } : out;
  }

  function builtin(name, keys, values, rereduce) {
    switch (name) {
      case "_count":
        return rereduce ? sum(values) : values.length;
      case "_sum":
        if (values.length === 0) return 0;
        values.forEach(checkSummable);
        return values.reduce(function (a, b) { return numberSum(a, b); });
      case "_stats":
        return stats(values);
      default:
        throw { builtin: "unknown built-in reduce function " + name };
    }
  }

  function reduce(args) {
    try {
      if (args.source.charAt(0) === "_") {
        return { value: builtin(args.source, args.keys, args.values, args.rereduce) };
      }
      var fn = compileAll(args.sig, [args.source], args.lib ? { views: { lib: args.lib } } : {})[0];
      if (fn.error) {
        return { error: fn.error };
      }
      tick();
      var value = fn.fn(args.rereduce ? null : args.keys, args.values, args.rereduce);
      return { value: value === undefined ? null : value };
    } catch (e) {
      if (e && e.builtin) {
        return { error: e.builtin, builtin: true };
      }
      return { error: describe(e) };
    }
  }

  function filter(args) {
    var fn = compileAll(args.sig, [args.source], args.ddoc)[0];
    return args.docs.map(function (doc) {
      if (fn.error) {
        return { error: fn.error };
      }
      tick();
      try {
        return { pass: !!fn.fn.call(args.ddoc, JSON.parse(doc), args.req) };
      } catch (e) {
        return { error: describe(e) };
      }
    });
  }

  function validate(args) {
    var fn = compileAll(args.sig, [args.source], args.ddoc)[0];
    if (fn.error) {
      return { error: fn.error };
    }
    tick();
    try {
      fn.fn.call(args.ddoc, args.newDoc, args.oldDoc, args.userCtx, args.secObj);
      return { ok: true };
    } catch (e) {
      if (e && typeof e === "object" && !(e instanceof Error)) {
        if (typeof e.forbidden !== "undefined") {
          return { forbidden: e.forbidden };
        }
        if (typeof e.unauthorized !== "undefined") {
          return { unauthorized: e.unauthorized };
        }
      }
      return { error: describe(e) };
    }
  }

  var ops = { map: map, reduce: reduce, filter: filter, validate: validate };

  global.__outpost_dispatch = function (op, text) {
    logs = [];
    var result = ops[op](JSON.parse(text));
    return JSON.stringify({ result: result, logs: logs });
  };
})(globalThis, globalThis.__outpost_tick);
delete globalThis.__outpost_tick;
