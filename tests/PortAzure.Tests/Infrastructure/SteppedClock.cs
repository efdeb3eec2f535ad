using Microsoft.Extensions.Time.Testing;

namespace PortAzure.Tests.Infrastructure;

/// <summary>
/// A fake clock whose wall time can be stepped back. As in the runtime, timers and timestamps are not moved by it
/// (FakeTimeProvider's own timestamps are its wall time).
/// </summary>
public sealed class SteppedClock : FakeTimeProvider
{
    private TimeSpan _offset;

    public SteppedClock()
        : base(DateTimeOffset.UtcNow)
    {
    }

    public void StepBack(TimeSpan step) => _offset -= step;

    public override DateTimeOffset GetUtcNow() => base.GetUtcNow() + _offset;

    public override long GetTimestamp() => base.GetUtcNow().UtcTicks;
}
