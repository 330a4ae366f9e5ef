// A field-by-field comparison of document bodies, for the side-by-side view of conflicts.

/** Fields that are not part of a body's content. */
const SKIP = new Set(['_id', '_rev', '_revisions', '_conflicts', '_deleted_conflicts', '_revs_info']);

/** Whether two JSON values are equal (objects compared without regard to key order). */
export function same(a, b) {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && same(a[k], b[k]));
}

/**
 * Rows of the comparison: one per top-level field present in any body, with each body's value
 * (`undefined` when absent) and whether the bodies disagree on it. Fields in the order they
 * first appear.
 */
export function compare(bodies) {
  const fields = [];
  for (const body of bodies) {
    for (const key of Object.keys(body)) {
      if (!SKIP.has(key) && !fields.includes(key)) fields.push(key);
    }
  }
  return fields.map((key) => {
    const values = bodies.map((b) => (Object.prototype.hasOwnProperty.call(b, key) ? b[key] : undefined));
    const differs = values.some((v) => !same(v, values[0]));
    return { key, values, differs };
  });
}

/** A body without the metadata fields, as `_resolve` takes it. */
export function content(body) {
  const out = {};
  for (const [k, v] of Object.entries(body)) if (!SKIP.has(k)) out[k] = v;
  return out;
}
