package orders

// IDMaxAge is how long a drawn order id may wait to be used.
const IDMaxAge = idMaxAge
