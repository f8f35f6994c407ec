import type { Component } from './migrate.js'

/** Table names, shared by the key store and the tests that read raw rows. */
export const KEYS_TABLE = 'portcullis_keys'
export const KEY_EVENTS_TABLE = 'portcullis_key_events'

/**
 * The signing-key tables. The database itself holds the invariants the lifecycle promises, so a bug
 * or a crash cannot break them either:
 * - at most one `active` and at most one `pending` key (partial unique indexes);
 * - a `pending` or `active` key always has its sealed private part, a `retired` or `revoked` key never.
 */
export const keysComponent: Component = {
  name: 'keys',
  migrations: [{
    version: 1,
    description: 'signing keys and their state-change log',
    up: [
      `CREATE TABLE ${KEYS_TABLE} (
        kid TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired', 'revoked')),
        alg TEXT NOT NULL,
        key_size INTEGER NOT NULL,
        public_jwk TEXT NOT NULL,
        private_sealed TEXT,
        created_at BIGINT NOT NULL,
        activates_at BIGINT,
        activated_at BIGINT,
        retired_at BIGINT,
        revoked_at BIGINT,
        CHECK (state NOT IN ('pending', 'active') OR private_sealed IS NOT NULL),
        CHECK (state NOT IN ('retired', 'revoked') OR private_sealed IS NULL)
      )`,
      `CREATE UNIQUE INDEX ${KEYS_TABLE}_one_active ON ${KEYS_TABLE} (state) WHERE state = 'active'`,
      `CREATE UNIQUE INDEX ${KEYS_TABLE}_one_pending ON ${KEYS_TABLE} (state) WHERE state = 'pending'`,
      `CREATE TABLE ${KEY_EVENTS_TABLE} (
        at BIGINT NOT NULL,
        kid TEXT NOT NULL,
        event TEXT NOT NULL,
        detail TEXT
      )`,
      `CREATE INDEX ${KEY_EVENTS_TABLE}_at ON ${KEY_EVENTS_TABLE} (at)`
    ]
  }]
}
