/** True when a backend error is a UNIQUE / PRIMARY KEY violation (SQLite or PostgreSQL). */
export function isUniqueViolation (err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false
  const code = (err as { code?: unknown }).code
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY'
}
