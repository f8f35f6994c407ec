export interface OrderLine {
  productId: string
  name: string
  quantity: number
  /** Cents, as quoted by product-service when the order was placed. */
  unitPrice: number
}

export interface Order {
  id: string
  /** The `sub` of the user who placed it. */
  sub: string
  items: OrderLine[]
  total: number
  createdAt: string
  /** The request id it was created under: the same in gateway, order, user and product logs. */
  requestId: string
}

/** Orders by id, in memory. */
export class OrderBook {
  readonly #orders = new Map<string, Order>()
  #next = 1

  add (o: Omit<Order, 'id' | 'createdAt' | 'total'>): Order {
    const order: Order = {
      id: `o-${this.#next++}`,
      ...o,
      total: o.items.reduce((sum, l) => sum + l.unitPrice * l.quantity, 0),
      createdAt: new Date().toISOString()
    }
    this.#orders.set(order.id, order)
    return order
  }

  get (id: string): Order | undefined {
    return this.#orders.get(id)
  }

  list (sub?: string): Order[] {
    const all = [...this.#orders.values()]
    return sub === undefined ? all : all.filter((o) => o.sub === sub)
  }
}
