namespace PortAzure.Dispatcher.Delivery;

/// <summary>
/// How long a consumer loop (the delivery worker, the Port reporter) waits after a Redis error: 100 ms,
/// doubled after each error up to 5 s, and back to 100 ms after a round that went well.
/// </summary>
internal sealed class ErrorBackoff(TimeProvider timeProvider)
{
    private static readonly TimeSpan First = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan Max = TimeSpan.FromSeconds(5);

    public TimeSpan Current { get; private set; } = First;

    public void Reset() => Current = First;

    /// <summary>Waits <see cref="Current"/>, then doubles it.</summary>
    /// <returns>False when <paramref name="cancellationToken"/> ended the wait first.</returns>
    public async Task<bool> WaitAsync(CancellationToken cancellationToken)
    {
        try
        {
            await Task.Delay(Current, timeProvider, cancellationToken);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        finally
        {
            Current = TimeSpan.FromTicks(Math.Min(Current.Ticks * 2, Max.Ticks));
        }
    }
}
