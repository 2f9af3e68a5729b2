/**
 * dockerode ships no types, and @gridwork/provider uses it only through the DockerClient interface of
 * container-runtime.ts (the calls it makes, typed there): this declares just the constructor.
 */
declare module 'dockerode' {
  const Docker: new (options?: Record<string, unknown>) => unknown;
  export default Docker;
}
