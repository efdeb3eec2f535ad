using Microsoft.Extensions.Time.Testing;
using PortAzure.Dispatcher.Delivery;

namespace PortAzure.Tests.Dispatcher;

public class ErrorBackoffTests
{
    [Fact]
    public async Task WaitAsync_RepeatedErrors_DoublesFrom100MillisecondsUpTo5SecondsAndResets()
    {
        var clock = new FakeTimeProvider();
        var backoff = new ErrorBackoff(clock);
        var waits = new List<TimeSpan>();

        for (var i = 0; i < 8; i++)
        {
            waits.Add(backoff.Current);
            var wait = backoff.WaitAsync(CancellationToken.None);
            clock.Advance(waits[^1]);
            Assert.True(await wait);
        }
        backoff.Reset();

        Assert.Equal([100, 200, 400, 800, 1600, 3200, 5000, 5000], waits.Select(w => (int)w.TotalMilliseconds));
        Assert.Equal(TimeSpan.FromMilliseconds(100), backoff.Current);
    }

    [Fact]
    public async Task WaitAsync_CancelledDuringTheWait_ReturnsFalse()
    {
        var backoff = new ErrorBackoff(new FakeTimeProvider());
        using var stop = new CancellationTokenSource();

        var wait = backoff.WaitAsync(stop.Token);
        await stop.CancelAsync();

        Assert.False(await wait);
    }
}
