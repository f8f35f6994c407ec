export interface Product {
  id: string
  name: string
  /** Price in cents. */
  price: number
  stock: number
}

/** The example catalog every product-service starts with. */
export const SEED_PRODUCTS: readonly Product[] = [
  { id: 'p-1', name: 'Portcullis mug', price: 1200, stock: 50 },
  { id: 'p-2', name: 'Gatekeeper hoodie', price: 4500, stock: 20 },
  { id: 'p-3', name: 'JWKS sticker pack', price: 300, stock: 500 },
  { id: 'p-4', name: 'Key-rotation key ring', price: 800, stock: 100 }
]

/** Products by id, in memory. */
export class Catalog {
  readonly #products = new Map<string, Product>()
  #next = 1

  constructor (seed: readonly Product[] = SEED_PRODUCTS) {
    for (const p of seed) this.#products.set(p.id, { ...p })
    this.#next = seed.length + 1
  }

  list (): Product[] {
    return [...this.#products.values()]
  }

  get (id: string): Product | undefined {
    return this.#products.get(id)
  }

  add (p: Omit<Product, 'id'>): Product {
    let id = `p-${this.#next++}`
    while (this.#products.has(id)) id = `p-${this.#next++}`
    const product = { id, ...p }
    this.#products.set(id, product)
    return product
  }
}
