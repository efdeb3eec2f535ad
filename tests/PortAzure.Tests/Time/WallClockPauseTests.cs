using PortAzure.Time;

namespace PortAzure.Tests.Time;

public sealed class WallClockPauseTests
{
    private static readonly DateTimeOffset Now = new(2026, 11, 27, 12, 0, 0, TimeSpan.Zero);
    private static readonly TimeSpan Longest = TimeSpan.FromSeconds(10);

    [Theory]
    [InlineData(1, true)]
    [InlineData(10, true)]
    [InlineData(0, false)]
    [InlineData(-1, false)]
    public void Runs_EndWithinItsLength_RunsUntilItsEnd(int secondsLeft, bool expected) =>
        Assert.Equal(expected, WallClockPause.Runs(Now.AddSeconds(secondsLeft), Now, Longest));

    [Fact]
    public void Runs_EndFurtherAwayThanItsLength_IsNotWaitedOut()
    {
        // The clock was stepped back an hour after a 10-s pause began: its end is now an hour and 10 s away.
        Assert.False(WallClockPause.Runs(Now.AddHours(1).AddSeconds(10), Now, Longest));
        Assert.False(WallClockPause.Runs(Now.Add(Longest).AddTicks(1), Now, Longest));
    }
}
