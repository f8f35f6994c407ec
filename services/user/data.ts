/** A user's profile as this example service keeps it: in memory, built from the verified token. */
export interface Profile {
  id: string
  name: string
  role: string
  active: boolean
  firstSeen: string
}

/** Profiles by `sub`. A real service would keep these in its own database. */
export class ProfileDirectory {
  readonly #profiles = new Map<string, Profile>()

  /** The caller's profile, created the first time their token is seen. */
  upsertFromToken (sub: string, claims: Record<string, unknown>, role: string | undefined): Profile {
    let p = this.#profiles.get(sub)
    if (p === undefined) {
      const name = typeof claims.name === 'string' ? claims.name : typeof claims.preferred_username === 'string' ? claims.preferred_username : sub
      p = { id: sub, name, role: role ?? 'user', active: true, firstSeen: new Date().toISOString() }
      this.#profiles.set(sub, p)
    } else if (role !== undefined && p.role !== role) {
      p.role = role
    }
    return p
  }

  get (id: string): Profile | undefined {
    return this.#profiles.get(id)
  }

  list (): Profile[] {
    return [...this.#profiles.values()]
  }
}
