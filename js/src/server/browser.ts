// What a browser bundle gets for wattfare/server: the secret key must never be there.
throw new Error(
  "wattfare/server must not be imported in a browser bundle: it holds the app's secret key. "
  + "Import it only in server code (route handlers, server actions) and use wattfare/client "
  + "or wattfare/react in the page.",
);
